"""Two browser contexts (Minseo, Jun) in one room, driven over the Chrome DevTools Protocol."""

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

BASE = sys.argv[1]  # http://127.0.0.1:8765
PATH = sys.argv[2]  # room path
SESSIONS = dict(zip(("minseo", "jun"), sys.argv[3:5], strict=True))
OUT = Path(tempfile.gettempdir()) / "shots"
OUT.mkdir(exist_ok=True)
WIDTH = int(sys.argv[5]) if len(sys.argv) > 5 else 1200


class CDP:
    def __init__(self, ws):
        self.ws, self.ids, self.pending = ws, itertools.count(1), {}

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)

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


async def page_for(cdp, who):
    ctx = (await cdp.call("Target.createBrowserContext"))["browserContextId"]
    target = (
        await cdp.call("Target.createTarget", {"url": "about:blank", "browserContextId": ctx})
    )["targetId"]
    session = (await cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}))[
        "sessionId"
    ]
    await cdp.call("Page.enable", session=session)
    await cdp.call(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": WIDTH,
            "height": 900 if WIDTH > 500 else 780,
            "deviceScaleFactor": 1,
            "mobile": WIDTH < 500,
        },
        session=session,
    )
    await cdp.call("Network.enable", session=session)
    await cdp.call(
        "Network.setCookie",
        {"name": "sessionid", "value": SESSIONS[who], "url": BASE},
        session=session,
    )
    await cdp.call("Page.navigate", {"url": BASE + PATH}, session=session)
    return session


async def js(cdp, session, expr):
    r = await cdp.call(
        "Runtime.evaluate",
        {"expression": expr, "awaitPromise": True, "returnByValue": True},
        session=session,
    )
    return r["result"].get("value")


async def wait_for(cdp, session, expr, what, within=120):
    for _ in range(within * 4):
        if await js(cdp, session, expr):
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(what)


async def shot(cdp, session, name):
    data = (await cdp.call("Page.captureScreenshot", {"format": "png"}, session=session))["data"]
    await asyncio.to_thread((OUT / f"{name}.png").write_bytes, base64.b64decode(data))
    print("saved", name)


async def say(cdp, session, text):
    await js(
        cdp,
        session,
        f"""(() => {{ const i = document.getElementById('composer-input');
      i.value = {json.dumps(text)}; i.dispatchEvent(new Event('input'));
      document.getElementById('composer').requestSubmit(); return true; }})()""",
    )


def start_browser(port: int) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603 - a fixed command line, no user input
        [
            shutil.which("chromium") or "/usr/bin/chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={OUT.parent / 'chrome-profile'}",
            "about:blank",
        ],
        stderr=subprocess.DEVNULL,
    )


def devtools_url(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version") as answer:
        return json.load(answer)["webSocketDebuggerUrl"]


async def main():
    port = 9333
    proc = start_browser(port)
    try:
        for _ in range(100):
            try:
                url = await asyncio.to_thread(devtools_url, port)
                break
            except Exception:
                await asyncio.sleep(0.2)
        async with websockets.connect(url, max_size=50_000_000) as ws:
            cdp = CDP(ws)
            reader = asyncio.create_task(cdp.reader())
            m = await page_for(cdp, "minseo")
            j = await page_for(cdp, "jun")
            live = "document.getElementById('chat-status')?.dataset.status === 'online'"
            await wait_for(cdp, m, live, "minseo online")
            await wait_for(cdp, j, live, "jun online")
            suffix = "" if WIDTH > 500 else "-phone"
            await say(cdp, m, "Hi Jun! actually my name is Minseo, not Min.")
            await wait_for(
                cdp, j, "document.body.innerText.includes('not Min.')", "jun sees minseo"
            )
            await js(
                cdp,
                j,
                "(() => { const i = document.getElementById('composer-input'); i.value = '@';"
                " i.dispatchEvent(new Event('input')); i.focus(); return true; })()",
            )
            await wait_for(cdp, j, "!document.getElementById('tag-suggest').hidden", "suggestions")
            await wait_for(
                cdp,
                m,
                "document.getElementById('typing').textContent.includes('Jun')",
                "typing shown",
            )
            await shot(cdp, j, "jun-autocomplete" + suffix)
            await shot(cdp, m, "minseo-sees-typing" + suffix)
            await say(cdp, j, "@요약" if WIDTH < 500 else "@chatbot what is my friend's name?")
            await wait_for(
                cdp,
                m,
                "document.querySelector('.msg--assistant[data-state=complete]') !== null",
                "reply done on minseo",
                within=240,
            )
            await wait_for(
                cdp,
                j,
                "document.querySelector('.msg--assistant[data-state=complete]') !== null",
                "reply done on jun",
                within=60,
            )
            await js(cdp, m, "document.querySelector('details.room-people').open = true")
            await shot(cdp, m, "minseo-room" + suffix)
            await shot(cdp, j, "jun-room" + suffix)
            await say(cdp, j, "@nobody hello?")
            await wait_for(cdp, j, "!document.getElementById('composer-notice').hidden", "notice")
            await shot(cdp, j, "jun-notice" + suffix)
            reader.cancel()
    finally:
        proc.terminate()


asyncio.run(main())
