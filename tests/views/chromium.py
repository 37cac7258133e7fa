"""Open HTML pages in headless Chromium and check what a reader would see.

Used by tests/views/test_browser.py (imported by path). Chromium is driven over the Chrome
DevTools Protocol with the ``websocket-client`` package (no Playwright):

- every JavaScript exception, ``console.error`` and error-level log entry is collected;
- every Plotly div must have drawn: an ``svg.main-svg`` with children, or a WebGL canvas;
- each figure is screenshotted (clipped to its div) and the PNG, decoded here with ``zlib``
  (no Pillow), must hold more than a few distinct colours: a blank or single-colour plot fails.

    >>> with Chromium() as browser:
    ...     page = browser.check(Path("report.html"), shots=Path("runs/browser"))
    ...     assert not page.errors and all(f.drawn for f in page.figures)
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


REQUIRE_ENV = "STEERLAB_REQUIRE_BROWSER"
"""When set (CI sets it to 1), a missing Chromium fails the browser tests instead of skipping."""


def open_or_skip() -> Chromium:
    """A :class:`Chromium`, or ``pytest.skip`` when there is none and :data:`REQUIRE_ENV` is
    unset (``pytest.fail`` when it is set)."""
    import pytest

    if find_chromium() is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but no chromium was found (apt-get install -y "
                        "chromium, or set CHROMIUM=/path/to/chrome)")  # fmt: skip
        pytest.skip(f"no chromium (apt-get install -y chromium); set {REQUIRE_ENV}=1 to fail "
                    "instead")  # fmt: skip
    return Chromium()


def screenshots_dir() -> Path:
    """Where screenshots go: ``$STEERLAB_SCREENSHOTS``, else ``runs/browser`` in the checkout."""
    return Path(
        os.environ.get("STEERLAB_SCREENSHOTS") or Path(__file__).parents[2] / "runs" / "browser"
    )


def check_page(browser: Chromium, path: Path, name: str, min_colours: int = 8) -> PageCheck:
    """Open ``path`` and assert what a reader needs: no JavaScript error, every figure drawn
    with more than ``min_colours`` colours, nothing wider than the window. Screenshots are
    saved in :func:`screenshots_dir` as ``<name>-figNN.png`` and ``<name>-page.png``."""
    page = browser.check(path, screenshots_dir(), name=name)
    assert page.errors == [], f"{name}: {page.errors}"
    assert page.figures, f"{name}: no Plotly figure on the page"
    for f in page.figures:
        assert f.drawn, f"{name}: figure {f.id} did not draw"
        assert f.width > 100 and f.height > 100, f"{name}: figure {f.id} is {f.width}x{f.height}"
        assert f.colours > min_colours, f"{name}: figure {f.id} has {f.colours} colours"
        assert f.screenshot is not None and f.screenshot.stat().st_size > 1000
    assert page.width <= browser.width, f"{name}: the page is {page.width} px wide (scrolls)"
    return page


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$CHROMIUM`` or the first one on ``PATH``."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Figure(NamedTuple):
    """One Plotly div after the page loaded."""

    id: str
    drawn: bool
    """An ``svg.main-svg`` with content, or a WebGL canvas, is present."""
    width: float
    height: float
    colours: int
    """Distinct colours in its screenshot."""
    screenshot: Path | None


class PageCheck(NamedTuple):
    """What a page showed: its errors, its figures, its full height, its text."""

    errors: list[str]
    figures: list[Figure]
    height: float
    width: float
    text: str
    screenshot: Path | None


# --- PNG decoding (zlib + numpy), enough for Chromium's 8-bit RGB(A) screenshots ------------


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB or RGBA PNG to ``[height, width, channels]`` uint8."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(
            f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}"
        )
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    rows = raw.reshape(height, width * bpp + 1)
    kind = rows[:, 0].astype(np.int64)
    line = rows[:, 1:].reshape(height, width, bpp).astype(np.int64)
    # Each row has its own filter (None, Sub, Up, Average, Paeth) predicting a byte from its
    # left, up and upper-left neighbours, already reconstructed. Pixel (y, x) needs only pixels
    # of smaller y + x, so the anti-diagonals y + x = k can be reconstructed in order, each in
    # one vectorised step (width + height steps instead of width × height).
    out = np.zeros((height + 1, width + 1, bpp), dtype=np.int64)  # a zero row and column first
    for k in range(width + height - 1):
        ys = np.arange(max(0, k - width + 1), min(height, k + 1))
        xs = k - ys
        left, up, ul = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        f = kind[ys][:, None]
        p = left + up - ul
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = np.select([f == 1, f == 2, f == 3, f == 4],
                         [left, up, (left + up) // 2, paeth], 0)  # fmt: skip
        out[ys + 1, xs + 1] = (line[ys, xs] + pred) % 256
    return out[1:, 1:].astype(np.uint8)


def distinct_colours(png: bytes) -> int:
    """Number of distinct RGB colours of a PNG."""
    px = png_pixels(png)[..., :3].reshape(-1, 3).astype(np.uint32)
    return len(np.unique((px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]))


# --- the browser ----------------------------------------------------------------------------

_FIGURES_JS = """(() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
  const svg = d.querySelector('svg.main-svg');
  const r = d.getBoundingClientRect();
  return {id: d.id, svg: svg ? svg.childElementCount : 0,
          gl: d.querySelectorAll('canvas').length, x: r.left + window.scrollX,
          y: r.top + window.scrollY, w: r.width, h: r.height};
}))()"""


class Chromium:
    """A headless Chromium process and one DevTools connection to a page of it.

    Args:
        executable: the browser (default :func:`find_chromium`).
        width, height: the window size in CSS pixels.
        timeout: seconds to wait for a page to load and its figures to draw.
    """

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900,
                 timeout: float = 60.0) -> None:  # fmt: skip
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no chromium found (apt-get install -y chromium)")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="steerlab-chromium-")
        self._proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{exe} did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                               suppress_origin=True)  # fmt: skip
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method; events that arrive meanwhile are kept in :attr:`events`."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def _errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(
                    f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
                )
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                         for a in p.get("args", [])))  # fmt: skip
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        return out

    def check(self, page: Path, shots: Path | None = None, *, name: str | None = None) -> PageCheck:
        """Load ``page``, wait for its figures, collect errors and screenshots (into ``shots``)."""
        self.events.clear()
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        self.send("Page.navigate", url=page.resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{page} did not finish loading in {self.timeout} s")
            self.evaluate("1")  # pumps events
            time.sleep(0.05)
        figs = self.evaluate(_FIGURES_JS)
        while not all(f["svg"] > 0 or f["gl"] > 0 for f in figs) and time.monotonic() < deadline:
            time.sleep(0.2)
            figs = self.evaluate(_FIGURES_JS)
        time.sleep(0.3)  # let transitions settle before the screenshots
        figs = self.evaluate(_FIGURES_JS)
        metrics = self.send("Page.getLayoutMetrics")["cssContentSize"]
        text = self.evaluate("document.body.innerText")
        stem = name or page.stem
        out_figs = []
        for i, f in enumerate(figs):
            png, path = None, None
            if f["w"] > 0 and f["h"] > 0:
                png = self._shot({"x": f["x"], "y": f["y"], "width": f["w"], "height": f["h"],
                                  "scale": 1})  # fmt: skip
                if shots is not None:
                    shots.mkdir(parents=True, exist_ok=True)
                    path = shots / f"{stem}-fig{i:02d}.png"
                    path.write_bytes(png)
            out_figs.append(Figure(f["id"], f["svg"] > 0 or f["gl"] > 0, f["w"], f["h"],
                                   distinct_colours(png) if png else 0, path))  # fmt: skip
        full = None
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            full = shots / f"{stem}-page.png"
            h = min(metrics["height"], 30000)
            full.write_bytes(self._shot({"x": 0, "y": 0, "width": metrics["width"], "height": h,
                                         "scale": 1}))  # fmt: skip
        return PageCheck(self._errors(), out_figs, metrics["height"], metrics["width"], text, full)

    def _shot(self, clip: dict[str, float]) -> bytes:
        res = self.send("Page.captureScreenshot", format="png", clip=clip,
                        captureBeyondViewport=True)  # fmt: skip
        return base64.b64decode(res["data"])
