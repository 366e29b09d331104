"""`manage.py run_fake_upstream`: serve the fake OpenAI-compatible upstream in the foreground.

Point a provider connection (or the `openai` SDK) at the printed base URL to demo or benchmark
without a key or network. Fault markers are listed in `providers.llm.fake_upstream`.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from providers.llm.fake_upstream import FakeUpstream


class Command(BaseCommand):
    help = "Run the fake OpenAI-compatible upstream on 127.0.0.1 until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8001, help="0 picks a free port.")

    def handle(self, *args: Any, port: int, **options: Any) -> None:
        # Ctrl-C or a TERM sets this event. A signal handler rather than KeyboardInterrupt: the
        # interrupt can land anywhere (even inside the server's start or stop), an event only
        # ends the wait below.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        upstream = FakeUpstream(port=port).start()
        try:
            self.stdout.write(f"Fake upstream at {upstream.base_url} (any key but sk-bad works)")
            self.stdout.flush()  # callers wait for this line; stdout may be a pipe
            while not stop.wait(0.5):  # the server runs in its thread
                pass
        finally:
            upstream.stop()
            self.stdout.write("Fake upstream stopped.")
