"""Helpers for driving the web client in a real headless Chromium (tests/test_browser.py).

The page logs machine-readable console lines, `STEP <kind>: <value>`; Chromium prints them on
stderr as INFO:CONSOLE lines, which `Chromium` collects. The microphone is a WAV file (Chromium
loops it), the server a `realtime.cli serve` subprocess on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 48_000  # Chromium's fake capture device wants 48 kHz
STEP_LINE = re.compile(r'"STEP ([a-z_]+): (.*)", source:')
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- microphone audio ----

def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def speech_like(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A loud voiced sound that Chromium's noise suppressor keeps: a harmonic "vowel" with a
    wandering pitch, chopped into ~4 syllables a second (stationary tones get suppressed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 10 * rng.standard_normal() * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # no clicks at the edges
    x = voice * syllables * ramp
    return 0.5 * x / np.max(np.abs(x))


def spoken_sentence(text: str, rate: int = RATE) -> np.ndarray:
    """`text` spoken by espeak-ng, resampled to `rate`."""
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), text], check=True, capture_output=True)
        with wave.open(str(out)) as w:
            src_rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    x = soxr.resample(x, src_rate, rate)
    return 0.8 * x / max(1e-6, float(np.max(np.abs(x))))


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


# ---- the server ----

@contextmanager
def run_server(config: str, ready_timeout_s: float = 120.0, log_path: Path | None = None,
               api_key: str | None = None):
    """`realtime.cli serve` on a free loopback port; yields its base URL. With `api_key`: auth on,
    the key given in $STEP_REALTIME_API_KEYS."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    args, env = [], dict(os.environ)
    if api_key is not None:
        args, env["STEP_REALTIME_API_KEYS"] = ["--set", "server.auth.enabled=true"], api_key
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "serve", "--config", config, "--port", str(port), *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready on {url} after {ready_timeout_s} s")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        if log_path:
            log.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def refusing_server(status: int, message: str):
    """Serves web_client/ but answers every offer with `status`: for the page's error path."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(message.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(REPO / "web_client")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ---- the browser ----

class Chromium:
    """Headless Chromium with a WAV as its microphone, collecting the page's STEP lines."""

    def __init__(self, url: str, wav: Path, workdir: Path, executable: str | None = None) -> None:
        self.steps: list[tuple[str, str]] = []
        self.stderr_tail: list[str] = []
        self._devtools: str | None = None
        self._changed = threading.Condition()
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        args = [
            executable or find_chromium() or "chromium",
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1000,760",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--enable-logging=stderr", "--v=0", "--remote-debugging-port=0", url,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                if m := STEP_LINE.search(line):
                    self.steps.append((m.group(1), m.group(2)))
                elif m := DEVTOOLS.search(line):
                    self._devtools = m.group(1)
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-40:]
                self._changed.notify_all()

    def values(self, kind: str) -> list[str]:
        with self._changed:
            return [v for k, v in self.steps if k == kind]

    def wait_for(self, done, timeout_s: float) -> bool:
        """Wait until `done(self)` is true, Chromium exits, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return done(self)
                self._changed.wait(min(left, 1.0))
        return True

    def report(self) -> str:
        """What happened, for assertion messages."""
        with self._changed:
            steps = "\n".join(f"  {k}: {v}" for k, v in self.steps[-60:])
            tail = "\n".join(self.stderr_tail[-15:])
        return f"STEP lines (last 60):\n{steps}\nchromium stderr (last 15):\n{tail}"

    def screenshot(self, path: Path, timeout_s: float = 20.0) -> Path:
        """A PNG of the page as it is now."""
        result = self.devtools("Page.captureScreenshot", {"format": "png"}, timeout_s)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def evaluate(self, expression: str, timeout_s: float = 20.0):
        """The value of a JavaScript expression in the page (e.g. a click on a button)."""
        result = self.devtools("Runtime.evaluate", {"expression": expression, "returnByValue": True}, timeout_s)
        return result["result"].get("value")

    def devtools(self, method: str, params: dict, timeout_s: float = 20.0) -> dict:
        """One DevTools-protocol command to the page; its result."""
        if not self.wait_for(lambda b: b._devtools is not None, timeout_s):
            raise RuntimeError("Chromium did not print its DevTools address")
        return asyncio.run(asyncio.wait_for(_devtools_call(self._devtools, method, params), timeout_s))

    def close(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _devtools_call(browser_ws: str, method: str, params: dict) -> dict:
    import aiohttp

    http = browser_ws.replace("ws://", "http://").split("/devtools/")[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{http}/json/list") as r:
            pages = [t for t in await r.json() if t["type"] == "page"]
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            await ws.send_json({"id": 1, "method": method, "params": params})
            async for msg in ws:
                reply = msg.json()
                if reply.get("id") == 1:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
    raise RuntimeError(f"DevTools closed before {method} answered")


def floats(values: list[str]) -> list[float]:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out

