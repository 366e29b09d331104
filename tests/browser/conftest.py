"""Browser journeys: Debian's headless Chromium, driven by Playwright, against Daphne serving
the real app (``live_daphne``) with the fake upstream (or, once, the built-in local model).

The journeys are marked ``browser``: ``make test`` runs them in a pytest run of their own,
after the rest, with Chromium from ``scripts/chromium.sh`` and axe-core from
``scripts/axe.sh`` (``CHROMIUM`` and ``AXE_JS`` name them; without them, the chromium on the
PATH and a run of the script). Run them alone with ``.venv/bin/pytest -m browser``.

Nothing here sleeps or measures time: Playwright's auto-waiting (``expect``,
``wait_for_function``) waits for what a person would see, bounded by `TIMEOUT_MS` so that
something that never comes fails the test instead of hanging it. Behaviour over time (a reply
that grows token by token, a transcript that follows it) is recorded in the page by
`RECORDER`, one sample per change of the DOM, and judged after the fact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from django import db
from django.conf import settings
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from accounts.models import Project, User
from chat import services as chat_services
from chat.actors import Actor
from chat.models import Conversation
from providers.models import ProjectModel
from providers.services import connection_model_add
from tests.chat.conftest import fake_connection
from tests.conftest import session_cookie

ROOT = Path(settings.BASE_DIR)
SCREENSHOTS = ROOT / "var" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
# How long Playwright waits for anything before the test fails (a bound, never a pause):
# generous, since two cores may be running Chromium, Daphne and the test at once.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)
# A reply that streams long enough to be watched, stopped and reloaded: 60 words, one chunk
# each, 50 ms apart (the fake upstream's markers: providers/llm/fake_upstream.py).
STREAMING_MODEL = "fake-gpt@slow50@words60"
AXE_ROUTE = "/__browser-tests__/axe.min.js"
T = TypeVar("T")

# Injected before any page script, in every document. Each change of the DOM (a delta
# appended, a state changed) adds a sample of the latest reply, ``seen: "change"``: its id,
# state and text length. Once the browser has rendered that change (the next frame, after any
# ResizeObserver that keeps the view at the end), a ``seen: "painted"`` sample says where the
# box that scrolls the reply stood: ``scrollTop``, and ``gap``, the pixels between the bottom of
# what is shown and the bottom of what there is (0: scrolled to the end).
RECORDER = """
(() => {
  window.__samples = [];
  // What the Content-Security-Policy refused: the page tried it (an inline script or style, a
  // fetch from elsewhere), even though no request left.
  window.__refused = [];
  document.addEventListener("securitypolicyviolation", (event) => {
    window.__refused.push(
      `${event.effectiveDirective} refused ${event.blockedURI || "inline"}`
      + ` at ${event.sourceFile || location.pathname}:${event.lineNumber}`
    );
  });
  const scrollerOf = (node) => {
    for (let box = node.parentElement; box; box = box.parentElement) {
      const overflow = getComputedStyle(box).overflowY;
      if ((overflow === "auto" || overflow === "scroll") && box.scrollHeight > box.clientHeight) {
        return box;
      }
    }
    return document.scrollingElement;
  };
  const sample = (seen) => {
    const replies = document.querySelectorAll("#msgs .msg--assistant");
    const reply = replies[replies.length - 1];
    if (!reply) return;
    const box = scrollerOf(reply);
    window.__samples.push({
      seen,
      id: reply.dataset.id || "",
      state: reply.dataset.state,
      length: (reply.querySelector(".msg-body") || reply).textContent.length,
      scrollTop: Math.round(box.scrollTop),
      gap: Math.round(box.scrollHeight - box.scrollTop - box.clientHeight),
    });
  };
  let painting = false;
  const changed = () => {
    sample("change");
    if (painting) return;
    painting = true;
    // A task queued from an animation frame runs once that frame is rendered.
    requestAnimationFrame(() => setTimeout(() => {
      painting = false;
      sample("painted");
    }));
  };
  new MutationObserver(changed).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
  document.addEventListener("scroll", changed, true);
})();
"""


def _found_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = _found_chromium()
    if path is None:
        pytest.fail(
            "No Chromium: run `bash scripts/chromium.sh` (make test does), or set CHROMIUM.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """axe.min.js, pinned and integrity-checked by scripts/axe.sh (fetched on first use)."""
    path = (
        os.environ.get("AXE_JS")
        or subprocess.run(  # noqa: S603 - our own script, no input
            ["bash", str(ROOT / "scripts" / "axe.sh")],  # noqa: S607
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    return Path(path)


def orm(work: Callable[[], T]) -> T:
    """Database work from a test once its browser runs, done on a thread of its own.

    Playwright's sync API marks its asyncio loop as running on this thread between its calls,
    and Django (rightly) refuses database work on a thread with a running loop. Rows a journey
    starts from are made by fixtures and before the first `open_page`; what it reads or
    changes later goes through here."""

    def run() -> T:
        try:
            return work()
        finally:
            db.connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


@dataclass
class Visit:
    """A browser context opened on the live server, and what left it for elsewhere."""

    page: Page
    base_url: str
    outside: list[str]


OpenPage = Callable[..., Visit]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each phase's report on the test, so `open_page` knows whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def open_page(
    request: pytest.FixtureRequest, live_daphne: str, chromium_executable: str, axe_script: Path
) -> Iterator[OpenPage]:
    """``open_page(user=alice, viewport=PHONE, color_scheme="dark", locale="ko-KR")``: a new
    page in a context of its own (logged in as ``user``), with `RECORDER` in every document.
    Any request to another origin than the live server's is kept in ``outside`` (and refused:
    there is no network here anyway)."""
    # Started on the first call, not as a fixture of its own: every fixture's rows are made
    # before Playwright marks its loop as running on this thread (see `orm`), and it has
    # stopped before the database is flushed at the end.
    running: list[Any] = []
    contexts: list[BrowserContext] = []
    server = urlsplit(live_daphne).netloc

    def browser() -> Browser:
        if not running:
            driver = sync_playwright().start()
            running.append(driver)
            running.append(
                driver.chromium.launch(
                    executable_path=chromium_executable,
                    headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                )
            )
        return running[1]

    def open_(
        *, user: User | None = None, viewport: dict[str, int] | None = None, **options: Any
    ) -> Visit:
        context = browser().new_context(
            base_url=live_daphne, viewport=viewport or DESKTOP, **options
        )
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(RECORDER)
        if user is not None:
            name, value = orm(lambda: session_cookie(user)).split("=", 1)
            context.add_cookies([{"name": name, "value": value, "url": live_daphne}])
        visit = Visit(page=context.new_page(), base_url=live_daphne, outside=[])

        def route(route_: Any) -> None:
            request = route_.request
            parts = urlsplit(request.url)
            if parts.path == AXE_ROUTE:
                route_.fulfill(path=axe_script, content_type="text/javascript")
            elif parts.scheme in ("http", "https") and parts.netloc != server:
                visit.outside.append(request.url)
                route_.abort()
            else:
                route_.continue_()

        context.route("**/*", route)
        return visit

    yield open_
    report = getattr(request.node, "report_call", None)
    try:
        if report is not None and report.failed:
            # What the browser showed when the test failed, to look at (var/screenshots/).
            for number, context in enumerate(contexts):
                for page in context.pages:
                    screenshot(page, f"failed-{request.node.name}-{number}")
    finally:
        if running:
            running[1].close()  # and every context in it
            running[0].stop()


def screenshot(page: Page, name: str) -> None:
    """A picture of the page for people to look at (var/screenshots/, git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    page.screenshot(path=SCREENSHOTS / f"{safe}.png", full_page=False)


def samples(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("window.__samples")


def refused(page: Page) -> list[str]:
    """What the page's Content-Security-Policy refused so far."""
    return page.evaluate("window.__refused")


def growth(recorded: list[dict[str, Any]], reply_id: str) -> list[int]:
    """The lengths a reply was seen at while it streamed, each longer than the one before."""
    lengths: list[int] = []
    for sample in recorded:
        streaming = sample["id"] == reply_id and sample["state"] == "streaming"
        if streaming and sample["seen"] == "change" and sample["length"] > max(lengths, default=-1):
            lengths.append(sample["length"])
    return lengths


# --- rows the journeys start from -------------------------------------------------------------


def use_fake_models(project: Project, upstream: Any, *models: str) -> None:
    """The project allows exactly ``models`` of the fake upstream, the first the default."""
    connection = fake_connection(project, upstream)
    ProjectModel.objects.filter(project=project).delete()
    for index, name in enumerate(models or (STREAMING_MODEL,)):
        model = connection_model_add(actor=None, connection=connection, name=name)
        ProjectModel.objects.create(project=project, model=model, name=name, is_default=not index)


def conversation(user: User, project: Project, model: str = STREAMING_MODEL, **fields: Any):
    made: Conversation = chat_services.conversation_create(
        actor=Actor(user=user), project=project, model=model
    )
    for name, value in fields.items():
        setattr(made, name, value)
    made.save()
    return made


def chat_url(item: Conversation) -> str:
    def url() -> str:
        project = item.project
        return f"/orgs/{project.organization.slug}/projects/{project.slug}/chat/{item.pk}/"

    return orm(url)
