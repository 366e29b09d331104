"""Text as a database can store it.

JSON allows any UTF-16 code unit to be escaped (``"\\ud800"``), so a parsed string may hold a
lone surrogate, which UTF-8 cannot encode (SQLite and PostgreSQL both refuse it), or a NUL,
which PostgreSQL refuses in text. Such characters become U+FFFD: the text is kept, never
dropped whole.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with every character no database can store replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)
