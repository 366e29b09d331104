"""Static files served in front of Django, at the ASGI level, by ServeStatic (an ASGI-capable
fork of WhiteNoise), with the settings ServeStatic's Django middleware reads.

Not a Django middleware: a static-file middleware sits in front of every request, and one that
is sync-only (WhiteNoise) makes Django run every request's whole middleware chain through a
thread. Here a request under ``STATIC_URL`` is answered from the file table and never enters
Django; every other request goes straight on.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from servestatic.asgi import FileServerASGI
from servestatic.middleware import ServeStaticMiddleware

Scope = dict[str, Any]


async def _unused(request: Any) -> Any:  # the middleware's own next step is never taken
    raise AssertionError("not called")


class StaticFilesASGI:
    def __init__(self, application: Any) -> None:
        self.application = application
        # Reads SERVESTATIC_* and STATIC_* and builds the file table (finders on the embedded
        # profile, the manifest in production) exactly as the middleware would.
        self.files = ServeStaticMiddleware(_unused)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.files.static_prefix):
            if self.files.autorefresh:  # development: look on disk, for files added since
                found = await sync_to_async(self.files.find_file, thread_sensitive=False)(
                    scope["path"]
                )
            else:
                found = self.files.files.get(scope["path"])
            if found is not None:
                await FileServerASGI(found)(scope, receive, send)
                return
        await self.application(scope, receive, send)
