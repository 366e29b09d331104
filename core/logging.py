"""Logging filters."""

import logging


class RefusalsWithoutTraceback(logging.Filter):
    """A refusal we meant (401, 403, 404, 429…) is one line in the log, not a traceback: Django
    attaches the exception that made it (``PermissionDenied``, ``Http404``) to the record, and a
    log full of expected stack traces hides the real errors. 5xx records keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
