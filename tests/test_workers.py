"""Runners in worker processes: faults stay in their cell, no process outlives the run, interference is seen."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from onnxstyle.backbones import get_backbone
from onnxstyle.bench import run as bench
from onnxstyle.bench.options import BenchOptions
from onnxstyle.bench.run import run_bench
from onnxstyle.errors import WorkerError
from onnxstyle.report import load_report, new_report, trust_line, write_report
from onnxstyle.runners import Runner
from onnxstyle.workers import Worker, last_error_line


def children():
    return psutil.Process().children(recursive=True)


def test_a_worker_hosts_an_object_and_reports_its_faults(tmp_path):
    with Worker("probe", log_dir=tmp_path) as worker:
        worker.start("fake_loops:FaultyLoop", 30, fault="raise", at=2)
        assert worker.call("step", 30) == 1.0
        with pytest.raises(WorkerError, match="^ValueError: the loop raised on purpose$"):
            worker.call("step", 30)
        assert worker.alive  # an exception is an answer: the worker goes on
        assert worker.run("os:getpid", 30) == worker.pid != os.getpid()
        with pytest.raises(WorkerError, match="no callable '_private'"):
            worker.call("_private", 30)
    assert not worker.alive and not children()


def test_last_error_line_skips_tracebacks_and_fatal_error_dumps():
    dump = "Fatal Python error: Segmentation fault\n\nCurrent thread 0x0000 (most recent call first):\n  File \"x.py\", line 3 in step\n\nExtension modules: numpy (total: 1)\n"
    assert last_error_line(dump) == "Fatal Python error: Segmentation fault"
    traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    step()\n    ^^^^^^\nMemoryError\n"
    assert last_error_line(traceback) == "MemoryError"
    assert last_error_line("") == ""


FAULTS = {
    # runner → (fault at 64 px, fault at 96 px); ORT's cells are real and must come through untouched
    Runner("torch", "cpu"): ("crash", "kill"),
    Runner("eager", "cpu"): ("hang", "memory"),
}


def test_crashing_hanging_and_killed_workers_fail_only_their_cells(monkeypatch, tmp_path):
    real_recipe = bench.cell_recipe

    def recipe(runner, spec, width, height, *args):
        if runner in FAULTS:
            return bench.LoopRecipe("fake_loops:faulty_loop", {"fault": FAULTS[runner][width == 96], "at": 5}, (width, height))
        return real_recipe(runner, spec, width, height, *args)

    monkeypatch.setattr(bench, "cell_recipe", recipe)
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {"cpu": bench.GemmRate("cpu", 8, 1, [100.0])})
    runners = [Runner("onnxruntime", "cpu"), *FAULTS]
    options = BenchOptions(runners, [get_backbone("nin")], [(64, 64), (96, 96)], weights="synthetic", iterations=2, runs=2, warmup=1, hang_seconds=5.0)
    started = time.perf_counter()
    cells, roofs, interrupted = run_bench(options)
    assert time.perf_counter() - started < 120
    assert not interrupted and not children()
    by_key = {(cell.runner, cell.width): cell for cell in cells}
    for width in (64, 96):
        good = by_key[("ort-cpu", width)]
        assert good.status == "ok" and good.median > 0 and len(good.windows) == 2 and good.interleaved
        assert good.check["ok"] if width == 64 else good.check is by_key[("ort-cpu", 64)].check
    reasons = {key: cell.reason for key, cell in by_key.items() if cell.status == "failed"}
    # step 5 is the first of window 2 (first iteration, one warm-up, two iterations per window)
    assert reasons[("torch-cpu", 64)].startswith("worker torch-cpu-nin-64x64-fp32 crashed (SIGSEGV) during window 2: Fatal Python error: Segmentation fault")
    assert reasons[("eager-cpu", 64)] == "worker eager-cpu-nin-64x64-fp32 hung: no answer during window 2 within 5 s; killed it"
    assert reasons[("torch-cpu", 96)].startswith("worker torch-cpu-nin-96x96-fp32 was killed by SIGKILL (out of memory?) during window 2")
    assert reasons[("eager-cpu", 96)] == "MemoryError"
    report = new_report(cells, options.as_dict(), roofs, {"nin": "synthetic"}, ["onnxstyle", "bench"], interrupted)
    paths = write_report(report, tmp_path, "faults")
    saved = load_report(paths["json"])
    assert [cell.status for cell in saved.cells] == [cell.status for cell in cells]
    assert saved.find("nin", "ort-cpu", 96, 96).median == by_key[("ort-cpu", 96)].median


def cli(*args, env=None, cwd=None):
    return subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def marked(marker):
    """Processes started with ``marker`` in their environment (the CLI and every worker it started)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("ONNXSTYLE_TEST_MARKER") == marker:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_bench_keeps_its_cells_and_leaves_no_workers(tmp_path, signal_number):
    marker = uuid.uuid4().hex
    env = {**os.environ, "ONNXSTYLE_TEST_MARKER": marker}
    process = cli(
        "bench", "--provider", "cpu", "--model", "nin", "--sizes", "64,96,128,160", "--iterations", "30", "--runs", "3",
        "--warmup", "0", "--weights", "synthetic", "--no-check", "--out", str(tmp_path), "--name", "cut", env=env, cwd=tmp_path,
    )
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "it/min" in line or not line:
            break
    assert "it/min" in lines[-1], "".join(lines)
    time.sleep(0.5)  # the next cell's worker is up
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = json.loads((tmp_path / "cut.json").read_text())
    statuses = [cell["status"] for cell in report["cells"]]
    assert statuses[0] == "ok" and "interrupted" in statuses and report["interrupted"]
    time.sleep(0.5)
    assert not marked(marker)


def test_a_cpu_hog_marks_the_cells_it_disturbs_and_the_run_untrusted(monkeypatch):
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {})
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        options = BenchOptions(
            [Runner("onnxruntime", "cpu"), Runner("eager", "cpu")], [get_backbone("nin")], [(64, 64)], weights="synthetic",
            check=False, duration=1.6, runs=2, warmup=0,
        )
        cells, roofs, interrupted = run_bench(options)
    finally:
        hog.kill()
        hog.wait()
    assert all(cell.status == "ok" for cell in cells)
    for cell in cells:
        assert cell.noisy, cell.windows
        assert any(reason["kind"] == "others" for reason in cell.noise), (cell.noise, cell.windows)
        # the hog's thread and the worker's two share two CPUs: the hog gets ≈2/3 of one, whatever the rounding
        assert sum(window["other_cpu_seconds"] for window in cell.windows) > 0.4 * sum(window["seconds"] for window in cell.windows)
    report = new_report(cells, options.as_dict(), roofs, {}, ["onnxstyle", "bench"], interrupted)
    assert trust_line(report).startswith("NOT TRUSTED: 2 of 2 measured cells are noisy (2 shared the CPUs with other work")
