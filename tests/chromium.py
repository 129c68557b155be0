"""Debian's headless Chromium (/usr/bin/chromium) driven over the DevTools protocol (`websocket-client`), for the
tests that check an HTML report as a browser shows it.

    with Chromium() as browser:            # Chromium(flags=AUDIO_FLAGS) for a page whose <audio> plays
        browser.open(page)                 # navigate, wait for the load event
        browser.evaluate("document.title") # any JavaScript expression (awaited when it is a promise)
        browser.screenshot(png)            # the whole page (up to 8000 px tall)
        browser.errors()                   # exceptions, console errors and error log entries so far

`open_in_chromium(page, screenshot)` does the common check in one call: the page's images (decoded or not),
errors, size, title, and a screenshot kept for people to look at.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IMAGES = ("Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,"
          " width: i.naturalWidth}))")
# a page's <audio> may play() without a click, and makes no sound on the machine running the tests
AUDIO_FLAGS = ("--autoplay-policy=no-user-gesture-required", "--mute-audio")
MAX_SHOT_HEIGHT = 8000  # px: a longer page is cut there (Chromium's own limit on one capture is near 16384)


class Chromium:
    """One browser with one page; started on enter, stopped (and its profile removed) on exit. `flags` are added
    to CHROMIUM_FLAGS (AUDIO_FLAGS, say)."""

    def __init__(self, timeout: float = 60.0, window: str = "1280,1000", flags: tuple[str, ...] = ()):
        self.timeout, self.window, self.flags = timeout, window, tuple(flags)
        self.events: list[dict] = []
        self._counter = iter(range(1, 1 << 30))

    def __enter__(self) -> "Chromium":
        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (make test installs it)")
        import websocket  # websocket-client

        self.profile = Path(tempfile.mkdtemp(prefix="omnimill-chromium-"))
        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, *self.flags, f"--user-data-dir={self.profile}",
                                         "--remote-debugging-port=0", f"--window-size={self.window}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + self.timeout
            port_file = self.profile / "DevToolsActivePort"  # Chromium writes the port it picked here
            while not (port_file.exists() and port_file.read_text().strip()):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not start: " + self.process.stderr.read1().decode()[-2000:])
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                target = next(t for t in json.load(response) if t["type"] == "page")
            self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=self.timeout,
                                                  suppress_origin=True)
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; the events that arrive before its answer are kept in `events`."""
        n = next(self._counter)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def open(self, page: Path) -> None:
        self.call("Page.navigate", url=Path(page).resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str):
        """The expression's value (JSON-able); a promise is awaited; an exception in it fails the call."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> dict:
        """The whole page as a PNG at `path` (cut at MAX_SHOT_HEIGHT); returns the page's CSS size."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], MAX_SHOT_HEIGHT),
                               "scale": 1})
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return size

    def errors(self) -> list[str]:
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(params["exceptionDetails"].get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(params["entry"].get("text"))
        return out


def open_in_chromium(page: Path, screenshot: Path, timeout: float = 60.0) -> dict:
    """Load `page`; report its images (decoded: complete and naturalWidth > 0), errors, size and title, and keep
    a screenshot at `screenshot`."""
    with Chromium(timeout) as browser:
        browser.open(page)
        images = browser.evaluate(IMAGES)
        size = browser.screenshot(screenshot)
        title = browser.evaluate("document.title")
        errors = browser.errors()
    return {"images": images, "errors": errors, "size": size, "title": title}
