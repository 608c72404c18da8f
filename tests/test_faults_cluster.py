"""Faults around --cluster: bad addresses and sizes are usage errors before any work, and a local Ray cluster
obeys the command that started it (SIGTERM is Ctrl-C; no Ray process outlives the command, even a SIGKILLed one)."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

# --- one address parser ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:99999", "--cluster port must be between 1 and 65535, got 99999 in '127.0.0.1:99999'"),
        ("ray://head:0", "--cluster port must be between 1 and 65535, got 0 in 'ray://head:0'"),
        ("http://127.0.0.1:1", "--cluster takes HOST:PORT (the head node's GCS address), ray://HOST:PORT or local, got 'http://127.0.0.1:1'"),
        ("head", "--cluster takes HOST:PORT"),
        (" ", "--cluster takes HOST:PORT"),
    ],
)
def test_a_malformed_cluster_address_is_a_usage_error_in_every_command(cli, tmp_path, address, message):
    for command in (("stylize", "--demo", "-o", tmp_path / "out.png"), ("bench", "--out", tmp_path)):
        result = cli(*command, "--cluster", address)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in " ".join(lines[0].split())
    assert not list(tmp_path.iterdir())


def test_the_parser_keeps_every_allowed_form():
    from onnxstyle.cluster import parse_address

    for address in ("local", "10.0.0.1:6379", "ray://head.lab:10001", "[::1]:6379", " head:1 "):
        assert parse_address(address) == address.strip()


# --- cluster-scale checks its options before it measures --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--overhead-size", "-1"], "--overhead-size must be a square size in px, or 0 to skip the overhead, got -1"),
        (["--size", "128", "--overhead-size", "7"], "--overhead-size 7x7 is too small for vgg19 up to relu5_1: needs at least 16x16"),
        (["--size", "8x100"], "--size 8x100 is too small for vgg19 up to relu5_1: needs at least 16x16"),
        (["--size", "100000x100000"], "--size 100000x100000 with --tile 512 needs ≈"),
        (["--size", "256", "--overhead-size", "100000"], "--overhead-size 100000x100000 with --tile 512 needs ≈"),
        (["--tile", "0"], "--tile must be positive, got 0"),
        (["--tile", "100"], "--tile 100 is smaller than vgg19's receptive field"),
    ],
)
def test_cluster_scale_refuses_what_it_cannot_measure_in_one_line(cli, tmp_path, options, message):
    started = time.monotonic()
    result = cli("cluster-scale", *options, "--weights", "synthetic", "--out", tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in " ".join(lines[0].split())
    assert not list(tmp_path.iterdir()) and time.monotonic() - started < 10  # refused before measuring


def test_a_tiled_run_below_the_minimum_size_says_so():
    import torch

    from onnxstyle.backbones import get_backbone
    from onnxstyle.engines import EngineSpec, create_engine
    from onnxstyle.errors import UsageError
    from onnxstyle.weights import resolve

    vgg = get_backbone("vgg19")
    engine = create_engine("torch", EngineSpec.defaults(vgg, resolve("synthetic", vgg)), threads=1, tile=160, sizes=[(7, 7)])
    with pytest.raises(UsageError, match=r"^7x7 is too small for vgg19 up to relu5_1: needs at least 16x16$"):
        engine.extract(torch.rand(1, 3, 7, 7))


# --- a local Ray cluster belongs to the command -----------------------------------------------------------------


def _watch(process, until, timeout=120.0):
    """Every process ``process`` starts (pid → start time), noted until ``until(names)`` holds or it ends."""
    seen, deadline = {}, time.monotonic() + timeout
    parent = psutil.Process(process.pid)
    while time.monotonic() < deadline and process.poll() is None:
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:  # Ray names its processes in their command line (ray::DashboardAgent), not in their executable
                seen[child.pid] = (child.create_time(), os.path.basename((child.cmdline() or [child.name()])[0]))
            except psutil.Error:
                pass
        if until({name for _, name in seen.values()}):
            return seen
        time.sleep(0.05)
    return seen


def _survivors(seen, grace=20.0):
    """The noted processes still alive after ``grace`` seconds (SIGKILLed before the test fails: the machine is shared)."""
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for pid, (started, name) in seen.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append((process, name))
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for process, _ in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return sorted(name for _, name in alive)


def _command(*args):
    return subprocess.Popen([sys.executable, "-m", "onnxstyle.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_while_a_local_cluster_starts_ends_in_130_and_leaves_no_ray_process(tmp_path):
    pytest.importorskip("ray")
    output = tmp_path / "out.png"
    process = _command(
        "stylize", "--demo", "--cluster", "local", "--engine", "torch", "--model", "nin", "--weights", "synthetic", "--size", "64",
        "--iterations", "2", "-o", str(output),
    )
    seen = _watch(process, lambda names: "raylet" in names)  # ray.init is under way
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    leftovers = _survivors(seen)
    assert process.returncode == 130, stderr
    assert "stylize interrupted while setting up; " in stderr and "out.png was not written" in " ".join(stderr.split())
    assert "SIGTERM received" not in stderr and "PC: @" not in stderr and "Traceback" not in stderr
    assert "raylet" in {name for _, name in seen.values()} and leftovers == []
    assert not output.exists()


@pytest.mark.slow  # ≈20 s: a local cluster starts and a node's bench task begins (make test-all)
def test_no_ray_process_outlives_a_sigkilled_cluster_bench(tmp_path):
    pytest.importorskip("ray")
    process = _command(
        "bench", "--cluster", "local", "--provider", "cpu", "--model", "nin", "--sizes", "64", "--iterations", "100000", "--runs", "1",
        "--warmup", "0", "--weights", "synthetic", "--no-check", "--out", str(tmp_path), "--name", "killed",
    )
    agents = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    seen = _watch(process, lambda names: agents <= names and any(name.startswith("ray::_bench_on_node") for name in names))
    process.kill()
    process.communicate(timeout=60)
    names = {name for _, name in seen.values()}
    assert agents <= names, names
    assert _survivors(seen) == []
