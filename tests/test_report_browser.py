"""The report in a real browser: headless Chromium opens report.html from disk and we check,
through the DevTools protocol, that it loads with no console error or exception, fetches
nothing from the network, shows every figure at a non-zero size, and can be screenshotted.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with a message where it is
missing. The DevTools websocket is spoken with the standard library only (a few lines of
RFC 6455 framing), so the test adds no dependency.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fixable.analysis.pipeline import AnalysisConfig, analyze, write_analysis
from fixable.analysis.synthetic import planted_rollouts
from fixable.report import build_report
from fixable.report.figures import FIGURES

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (apt-get install -y chromium); the report's "
    "browser check is skipped",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class DevTools:
    """A minimal DevTools-protocol client over one websocket: commands and the events that
    arrive while waiting for their answers."""

    def __init__(self, ws_url: str, timeout: float = 60.0):
        rest = ws_url.removeprefix("ws://")
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, self._pending = response.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.events: list[dict] = []
        self._next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self._pending) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the websocket")
            self._pending += chunk
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def _send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81])  # FIN + text frame
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _receive(self) -> dict:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if b0 & 0x0F == 0x9:  # ping: ignore, Chromium does not require a pong here
                continue
            message += payload
            if b0 & 0x80:  # FIN: the message is complete
                return json.loads(message)

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self._send(json.dumps({"id": self._next_id, "method": method, "params": params}).encode())
        while True:
            message = self._receive()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = next((e for e in self.events if e.get("method") == event), None)
        while seen is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            message = self._receive()
            self.events.append(message)
            if message.get("method") == event:
                seen = message
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    models = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")
    info = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in models}
    table, _ = planted_rollouts(models, n_failures=15, n_solved=2, r=16, seed=5)
    out = tmp_path_factory.mktemp("browser") / "analysis"
    config = AnalysisConfig(n_boot=40, stability_boot=4, n_seeds=2, n_splits=3)
    write_analysis(analyze(table, model_info=info, config=config), out)
    return build_report(out, formats=("png",)).html


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"chromium did not start (exit code {process.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        targets = json.load(response)
    page = next(t for t in targets if t.get("type") == "page")
    client = DevTools(page["webSocketDebuggerUrl"])
    try:
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_report_loads_offline_without_errors_and_shows_every_figure(report_page, browser, tmp_path):
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=report_page.as_uri())
    browser.wait_for("Page.loadEventFired")
    sizes = browser.call(
        "Runtime.evaluate",
        expression="JSON.stringify([...document.querySelectorAll('img.figure')].map(i => {"
        "const r = i.getBoundingClientRect(); return {id: i.id, width: r.width, height: r.height,"
        " natural: i.naturalWidth, complete: i.complete}; }))",
        returnByValue=True,
    )
    figures = json.loads(sizes["result"]["value"])
    metrics = browser.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = browser.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": min(size["height"], 6000), "scale": 1},
    )
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("FIXABLE_SCREENSHOT_DIR"):  # keep it for a person to look at
        shutil.copy(screenshot, Path(os.environ["FIXABLE_SCREENSHOT_DIR"]) / "report.png")

    errors = [
        e["params"]
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")
    ]
    assert errors == []
    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(u.startswith(("file:", "data:")) for u in requested), requested
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    assert failed == []
    assert [f["id"] for f in figures] == [f"img-{spec.name}" for spec in FIGURES]
    for f in figures:
        assert f["complete"] and f["natural"] > 0, f
        assert f["width"] > 100 and f["height"] > 100, f
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 50_000
