"""A local Ray cluster ends with the command that started it, even when that command is SIGKILLed.

Ray ties its raylet and GCS to the driver (they get SIGKILL when it dies), but the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive it and ignore SIGTERM, and a worker started
moments before may linger. The reaper is a process of its own, in its own session (a terminal's Ctrl-C
does not reach it): it holds the read end of a pipe whose write end only the driver has, notes the
driver's Ray processes and all of theirs as they appear, and when the pipe closes (the driver ended,
however it ended) SIGKILLs every one of them still alive, then exits.

Run as ``python -m onnxstyle.cluster.reaper DRIVER_PID RAY_DIR``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

POLL_SECONDS = 0.25  # how often the reaper looks for new Ray processes (a worker may start any time)
# This process's reaper, and when it started: the pipe to it stays open for as long as this process lives.
_reaper: dict[str, Any] = {}


def start_reaper() -> None:
    """Start this process's reaper (once): from now on, Ray processes it starts do not outlive it."""
    if _reaper and _reaper["process"].poll() is None:
        return
    import ray

    process = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cluster.reaper", str(os.getpid()), str(Path(ray.__file__).parent)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    _reaper.update(process=process, since=psutil.Process(process.pid).create_time(), ray_dir=str(Path(ray.__file__).parent))


def reap_now() -> None:
    """SIGKILL, from this process and at once, the Ray processes it started since its reaper did (an interrupted
    ``ray.init``: Ray's own clean-up would wait for each to answer SIGTERM, and the agents never do)."""
    if not _reaper:
        return
    seen: Seen = {}
    ray_descendants(psutil.Process(), _reaper["ray_dir"], seen, _reaper["since"])
    seen.pop(_reaper["process"].pid, None)
    reap(seen)


Seen = dict[int, float]  # pid → its start time, so a reused pid is never taken for a process we saw


def ray_descendants(driver: psutil.Process, ray_dir: str, seen: Seen, since: float) -> None:
    """Add to ``seen`` the driver's children that run Ray's code, started at ``since`` or later (not, say, a
    test's own cluster started before), and every descendant of theirs."""
    for child in driver.children():
        try:
            if child.create_time() < since or ray_dir not in " ".join(child.cmdline()):
                continue
            for process in [child, *child.children(recursive=True)]:
                seen.setdefault(process.pid, process.create_time())
        except psutil.Error:  # ended while we looked
            continue


def reap(seen: Seen) -> list[int]:
    """SIGKILL every process in ``seen`` still alive (and any child it has now); the pids killed."""
    alive = []
    for pid, started in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                alive += [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    killed = []
    for process in {process.pid: process for process in alive}.values():
        if process.pid == os.getpid():
            continue
        try:
            process.send_signal(signal.SIGKILL)
            killed.append(process.pid)
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)
    return killed


def main(driver_pid: int, ray_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    since = psutil.Process().create_time()  # the driver's Ray processes are younger than its reaper
    seen: Seen = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    stdin = sys.stdin.fileno()
    while True:
        try:
            ray_descendants(driver, ray_dir, seen, since)
        except psutil.Error:  # the driver is gone: its pipe is closed, the read below says so
            pass
        readable, _, _ = select.select([stdin], [], [], POLL_SECONDS)
        if readable and not os.read(stdin, 4096):
            break
    reap(seen)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
