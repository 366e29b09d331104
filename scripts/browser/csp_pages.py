"""Walks the pages and the admin in headless Chromium and reports what the CSP refused.

Over the Chrome DevTools Protocol: logs in (a member and a staff user, two browser contexts),
opens each page, chats once (the socket must connect and the reply stream in), calls @pirate in
the project's first room (a persona's avatar colour, set live and server-rendered), and collects
the console's errors and every `securitypolicyviolation` event. Screenshots go to OUT.

    python scripts/browser/csp_pages.py http://127.0.0.1:8790 demo@example.com demo-password \
        admin@example.com admin-password /tmp/shots-csp
"""

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import websockets

BASE, EMAIL, PASSWORD, ADMIN_EMAIL, ADMIN_PASSWORD = sys.argv[1:6]
OUT = Path(sys.argv[6] if len(sys.argv) > 6 else tempfile.gettempdir() + "/shots-csp")
OUT.mkdir(parents=True, exist_ok=True)
ORG, PROJECT = "demo", "demo-project"
CHAT = f"/orgs/{ORG}/projects/{PROJECT}/chat/"
# Refusals the policy means: Redoc's footer shows a logo from Redocly's CDN (nothing leaves our
# origin, and the page runs offline; Redoc drops the image when it fails to load).
EXPECTED = ("https://cdn.redoc.ly/",)

# Injected before any page script (DevTools scripts are not subject to the page's CSP): keeps
# every violation the page raises, for the report.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile || location.pathname}:${e.lineNumber}`;
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} at ${where}`);
});
"""


class CDP:
    def __init__(self, ws):
        self.ws, self.ids, self.pending = ws, itertools.count(1), {}
        self.console: dict[str, list[str]] = {}

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                self.on_event(msg.get("sessionId"), msg["method"], msg.get("params", {}))

    def on_event(self, session, method, params):
        lines = self.console.setdefault(session, [])
        if method == "Log.entryAdded":
            entry = params["entry"]
            if entry["level"] in ("error", "warning"):
                lines.append(f"[log {entry['level']}] {entry['text']} {entry.get('url', '')}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            lines.append(f"[console {params['type']}] {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            lines.append(f"[exception] {text}")

    async def call(self, method, params=None, session=None):
        i = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        payload = {"id": i, "method": method, "params": params or {}}
        if session:
            payload["sessionId"] = session
        await self.ws.send(json.dumps(payload))
        msg = await asyncio.wait_for(fut, 60)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg["result"]


async def new_page(cdp):
    ctx = (await cdp.call("Target.createBrowserContext"))["browserContextId"]
    target = (
        await cdp.call("Target.createTarget", {"url": "about:blank", "browserContextId": ctx})
    )["targetId"]
    session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        await cdp.call(f"{domain}.enable", session=session)
    await cdp.call(
        "Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS}, session=session
    )
    await cdp.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    return session


async def js(cdp, session, expr):
    r = await cdp.call(
        "Runtime.evaluate",
        {"expression": expr, "awaitPromise": True, "returnByValue": True},
        session=session,
    )
    return r["result"].get("value")


async def wait_for(cdp, session, expr, what, within=60):
    for _ in range(within * 4):
        try:
            if await js(cdp, session, expr):
                return
        except RuntimeError:
            pass  # the page is navigating
        await asyncio.sleep(0.25)
    raise TimeoutError(what)


async def loaded(cdp, session, path_prefix):
    await wait_for(
        cdp,
        session,
        f"document.readyState === 'complete' && location.pathname.startsWith({path_prefix!r})",
        f"load {path_prefix}",
    )


async def goto(cdp, session, path):
    await cdp.call("Page.navigate", {"url": BASE + path}, session=session)
    await loaded(cdp, session, path.split("?")[0])


async def shot(cdp, session, name):
    data = (await cdp.call("Page.captureScreenshot", {"format": "png"}, session=session))["data"]
    await asyncio.to_thread((OUT / f"{name}.png").write_bytes, base64.b64decode(data))


REPORT: dict[str, list[str]] = {}


async def check(cdp, session, label, settle=0.5):
    """What the page refused or threw since the last check."""
    await asyncio.sleep(settle)
    found = list(cdp.console.get(session, []))
    cdp.console[session] = []
    found += await js(cdp, session, "window.__csp || []") or []
    expected = [line for line in found if any(url in line for url in EXPECTED)]
    found = [line for line in found if line not in expected]
    REPORT[label] = found
    note = f" ({len(expected)} expected)" if expected else ""
    print(f"{label}: {'' if found else 'OK'}{note}")
    for line in found:
        print("   ", line[:400])


async def log_in(cdp, session, path, email, password, landing):
    await goto(cdp, session, path)
    await check(cdp, session, f"login page {path}")
    await js(
        cdp,
        session,
        f"""(() => {{ const f = document.querySelector('form input[name=password]').form;
        f.querySelector('input[name=username]').value = {json.dumps(email)};
        f.querySelector('input[name=password]').value = {json.dumps(password)};
        f.requestSubmit(); return true; }})()""",
    )
    await wait_for(
        cdp,
        session,
        f"document.readyState === 'complete' && location.pathname !== {path!r}",
        f"logged in at {landing}",
    )
    await loaded(cdp, session, landing)


async def member_pages(cdp, page):
    await log_in(cdp, page, "/login/", EMAIL, PASSWORD, "/")
    await check(cdp, page, "home")
    await shot(cdp, page, "home")

    await goto(cdp, page, CHAT)
    await check(cdp, page, "chat home")
    # A new chat started as the first persona: its replies carry the persona's avatar colour.
    await js(
        cdp,
        page,
        """(() => { const s = document.querySelector('select[name=persona]');
        if (s && s.options.length > 1) s.selectedIndex = 1;
        s.form.requestSubmit(); return true; })()""",
    )
    await wait_for(cdp, page, r"/\/chat\/\d+\/$/.test(location.pathname)", "new chat")
    online = "document.getElementById('chat-status')?.dataset.status === 'online'"
    await wait_for(cdp, page, online, "socket online")
    await js(
        cdp,
        page,
        """(() => { const i = document.getElementById('composer-input');
        i.value = 'Say hello in five words.'; i.dispatchEvent(new Event('input'));
        document.getElementById('composer').requestSubmit(); return true; })()""",
    )
    done = (
        "[...document.querySelectorAll('.msg--assistant')]"
        ".some(m => m.dataset.state && m.dataset.state !== 'streaming')"
    )
    await wait_for(cdp, page, done, "streamed reply", within=180)
    await check(cdp, page, "chat: socket + streamed reply")
    await shot(cdp, page, "chat-live")
    path = await js(cdp, page, "location.pathname")
    await goto(cdp, page, path)
    await wait_for(cdp, page, online, "socket online after reload")
    await check(cdp, page, "chat page reloaded")
    await shot(cdp, page, "chat")

    await goto(cdp, page, CHAT + "rooms/")
    room = await js(cdp, page, "document.querySelector('.room-card a')?.getAttribute('href')")
    if room:
        await goto(cdp, page, room)
        await wait_for(cdp, page, online, "room online")
        replies = "document.querySelectorAll('.msg--assistant')"
        before = await js(cdp, page, f"{replies}.length")
        # The pirate: a colour of its own, not the stylesheet's fallback.
        await js(
            cdp,
            page,
            """(() => { const i = document.getElementById('composer-input');
            i.value = '@pirate Say hello in five words.'; i.dispatchEvent(new Event('input'));
            document.getElementById('composer').requestSubmit(); return true; })()""",
        )
        persona_done = (
            f"(() => {{ const all = [...{replies}]; const last = all[all.length - 1];"
            f" return all.length > {before} && !!last.querySelector('.avatar--persona')"
            " && last.dataset.state !== 'streaming'; })()"
        )
        await wait_for(cdp, page, persona_done, "persona reply", within=180)
        live = await js(
            cdp,
            page,
            f"getComputedStyle([...{replies}].pop().querySelector('.avatar--persona'))"
            ".getPropertyValue('--persona')",
        )
        print(f"   live persona avatar --persona: {live}")
        await check(cdp, page, "room: @pirate reply")
        await shot(cdp, page, "room-live")
        await goto(cdp, page, room)
        colour = await js(
            cdp,
            page,
            """(() => { const a = [...document.querySelectorAll('.avatar--persona')].pop();
            return a && [a.dataset.personaColor,
                         getComputedStyle(a).getPropertyValue('--persona'),
                         getComputedStyle(a).backgroundColor]; })()""",
        )
        print(f"   server-rendered persona avatar (data, --persona, background): {colour}")
        await check(cdp, page, "room reloaded")
        await shot(cdp, page, "room")

    project = f"/orgs/{ORG}/projects/{PROJECT}/"
    for label, path in [
        ("personas", CHAT + "personas/"),
        ("persona form", CHAT + "personas/new/"),
        ("rooms", CHAT + "rooms/"),
        ("chat settings", CHAT + "settings/"),
        ("project", project),
        ("project settings", project + "settings/"),
        ("api keys", project + "settings/api-keys/"),
        ("models", project + "settings/models/"),
        ("organization settings", f"/orgs/{ORG}/"),
        ("usage", f"/orgs/{ORG}/usage/"),
        ("statements", f"/orgs/{ORG}/statements/"),
        ("password change", "/password_change/"),
    ]:
        await goto(cdp, page, path)
        await check(cdp, page, label)
        if label in ("personas", "usage"):
            await shot(cdp, page, label)
    first_persona = await js(
        cdp, page, "document.querySelector('.persona-who a')?.getAttribute('href')"
    )
    if first_persona:
        await goto(cdp, page, first_persona)
        await check(cdp, page, "persona edit")


async def admin_pages(cdp, page):
    await log_in(cdp, page, "/admin/login/", ADMIN_EMAIL, ADMIN_PASSWORD, "/admin/")
    await check(cdp, page, "admin index")
    await shot(cdp, page, "admin")
    for label, path in [
        ("admin budgets", "/admin/billing/budget/"),
        ("admin budget add", "/admin/billing/budget/add/"),
        ("admin usage records", "/admin/billing/usagerecord/"),
        ("admin usage summary", "/admin/billing/usagerecord/summary/"),
        ("admin users", "/admin/accounts/user/"),
        ("admin organization", "/admin/accounts/organization/"),
        ("admin personas", "/admin/chat/persona/"),
        ("admin messages", "/admin/chat/message/"),
    ]:
        await goto(cdp, page, path)
        await check(cdp, page, label)
        if label == "admin budgets":
            await shot(cdp, page, "admin-budgets")
    await goto(cdp, page, "/admin/accounts/organization/")
    first_org = await js(
        cdp, page, "document.querySelector('#result_list tbody th a')?.getAttribute('href')"
    )
    if first_org:
        await goto(cdp, page, first_org)
        await check(cdp, page, "admin organization change (budget inline)")
        await shot(cdp, page, "admin-organization")

    for label, path, rendered in [
        ("api docs (Swagger UI)", "/api/docs/", ".swagger-ui .opblock"),
        ("api redoc", "/api/redoc/", ".api-content h2"),
    ]:
        await goto(cdp, page, path)
        try:
            await wait_for(cdp, page, f"!!document.querySelector({rendered!r})", label, within=20)
        except TimeoutError:
            cdp.console.setdefault(page, []).append(f"[check] did not render ({rendered})")
        await check(cdp, page, label, settle=1)
        await shot(cdp, page, path.strip("/").replace("/", "-"))


def start_browser(port: int) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - a fixed command line, no user input
        [
            shutil.which("chromium") or "/usr/bin/chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={OUT / 'chrome-profile'}",
            "about:blank",
        ],
        stderr=subprocess.DEVNULL,
    )


def devtools_url(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version") as answer:
        return json.load(answer)["webSocketDebuggerUrl"]


async def main() -> int:
    port = 9334
    proc = start_browser(port)
    try:
        for _ in range(100):
            try:
                url = await asyncio.to_thread(devtools_url, port)
                break
            except OSError:
                await asyncio.sleep(0.2)
        async with websockets.connect(url, max_size=50_000_000) as ws:
            cdp = CDP(ws)
            reader = asyncio.create_task(cdp.reader())
            await member_pages(cdp, await new_page(cdp))
            await admin_pages(cdp, await new_page(cdp))
            reader.cancel()
    finally:
        proc.terminate()
        proc.wait()
    (OUT / "report.json").write_text(json.dumps(REPORT, indent=2, ensure_ascii=False))
    refused = sum(len(v) for v in REPORT.values())
    print(f"{len(REPORT)} pages, {refused} console errors or refusals")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
