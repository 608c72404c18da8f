"""Every command exits non-zero when nothing it was asked to do ran; sizes and counts are refused once, in one line;
an interruption names the signal that came (issue 23)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.errors import ImageError, ProviderError, UsageError
from onnxstyle.runners import Runner, runner_status


def flat(text):
    """Whitespace-insensitive text: no terminal width or temp-path length can break an ``in``."""
    return " ".join(text.split())


CUDA_USABLE = runner_status(Runner("onnxruntime", "cuda")) is None
NIN_TOO_SMALL = "7x7 is too small for nin up to relu10: needs at least 55x55"


@pytest.mark.parametrize(
    "args,code,message",
    [
        pytest.param(["parity", "--provider", "cuda"], 8, "ort-cuda is not usable here", marks=pytest.mark.skipif(CUDA_USABLE, reason="CUDA is usable here")),
        (["parity", "--provider", "cpu", "--precision", "bf16"], 2, "no selected runner can run bf16"),
        (["parity", "--model", "nin", "--sizes", "7"], 2, NIN_TOO_SMALL),
        (["parity", "--model", "vgg19,nin", "--sizes", "64,8"], 2, "8x8 is too small for vgg19 up to relu5_1: needs at least 16x16"),
        (["parity", "--threads", "0"], 2, "--threads must be positive, got 0"),
        (["bench", "--provider", "cpu", "--model", "nin", "--sizes", "7"], 2, NIN_TOO_SMALL),
        (["profile", "--model", "nin", "--size", "7"], 2, NIN_TOO_SMALL),
        (["profile", "--top", "-3"], 2, "--top must be positive, got -3"),
        (["profile", "--top", "0"], 2, "--top must be positive, got 0"),
        (["profile", "--runs", "0"], 2, "--runs must be positive, got 0"),
        (["profile", "--warmup", "-1"], 2, "--warmup cannot be negative, got -1"),
        (["profile", "--threads", "0"], 2, "--threads must be positive, got 0"),
    ],
)
def test_bad_sizes_and_counts_are_one_line_before_any_work(cli, tmp_path, args, code, message):
    out = ["--out", tmp_path / "r"] if args[0] in ("parity", "bench") else []
    result = cli(*args, *out, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in flat(lines[0]), result.stderr
    assert not (tmp_path / "r").exists()


def test_every_command_checks_sizes_with_the_same_words(tmp_path):
    from onnxstyle.exporters.models import dimension_values
    from onnxstyle.memory import forward_flops
    from onnxstyle.stylize import stylize

    vgg = get_backbone("vgg19")
    layers = [*vgg.default_content_layers, *vgg.default_style_layers]
    expected = "8x8 is too small for vgg19 up to relu5_1: needs at least 16x16"
    with pytest.raises(UsageError, match=f"^{expected}$"):
        forward_flops(vgg, layers, 8, 8)
    with pytest.raises(UsageError, match="^8x7 is too small for vgg19 up to relu4_2: needs at least 8x8$"):
        dimension_values(vgg, ["relu4_2"], 7, 8)  # (height, width)
    with pytest.raises(ImageError, match=f"^image {expected}$"):
        stylize(output=tmp_path / "x.png", size=8, weights="synthetic", model="vgg", iterations=1)


def fake_runner(failing=(), interrupt=(), seen=None):
    """``runner_loss_and_grad`` without building an engine: raises for the labels in ``failing`` (the error given),
    Ctrl-C for those in ``interrupt``, and otherwise answers the reference's loss with a zero gradient."""

    def run(runner, spec, targets, content, style, image, threads, precision="fp32"):
        if seen is not None:
            seen.append((runner.label, tuple(image.shape)))
        if runner.label in interrupt:
            raise KeyboardInterrupt
        if runner.label in failing:
            raise failing[runner.label]
        return 1.0, torch.zeros_like(image)

    return run


PARITY = ["parity", "--model", "nin", "--sizes", "64x56", "--weights", "synthetic", "--threads", "1"]


def test_parity_exits_with_the_cause_when_no_row_was_measured(cli, tmp_path, monkeypatch):
    from onnxstyle import gradient_checks

    seen = []
    monkeypatch.setattr(gradient_checks, "runner_loss_and_grad", fake_runner({"ort-cpu": RuntimeError("boom")}, seen=seen))
    result = cli(*PARITY, "--provider", "cpu,torch", "--out", tmp_path, "--name", "some", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # one row measured: the failure is in the report, as in bench
    assert seen == [("ort-cpu", (1, 3, 56, 64)), ("torch-cpu", (1, 3, 56, 64))]  # WIDTHxHEIGHT, not squared
    rows = json.loads((tmp_path / "some.json").read_text())["rows"]
    assert [(row["runner"], row["status"], row["width"], row["height"]) for row in rows] == [("ort-cpu", "failed", 64, 56), ("torch-cpu", "ok", 64, 56)]
    assert rows[0]["error"] == "boom" and rows[0]["error_code"] == ProviderError.exit_code
    assert "64x56" in (tmp_path / "some.md").read_text()

    failing = {"ort-cpu": RuntimeError("no kernel"), "torch-cpu": UsageError("cannot")}
    monkeypatch.setattr(gradient_checks, "runner_loss_and_grad", fake_runner(failing))
    result = cli(*PARITY, "--provider", "cpu,torch", "--out", tmp_path, "--name", "none", cwd=tmp_path)
    assert result.returncode == ProviderError.exit_code, result.stderr  # the first failure's cause
    assert "error: no row was measured; nin ort-cpu 64x56: no kernel" in flat(result.stderr)
    assert [row["status"] for row in json.loads((tmp_path / "none.json").read_text())["rows"]] == ["failed", "failed"]


def test_parity_skips_what_a_runner_cannot_run_and_names_the_interruption(cli, tmp_path, monkeypatch):
    from onnxstyle import gradient_checks

    monkeypatch.setattr(gradient_checks, "runner_loss_and_grad", fake_runner())
    result = cli(*PARITY, "--provider", "cpu,torch", "--precision", "fp16", "--out", tmp_path, "--name", "half", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "half.json").read_text())["rows"]
    assert [(row["runner"], row["status"]) for row in rows] == [("ort-cpu", "ok"), ("torch-cpu", "skipped")]
    assert rows[1]["error"].startswith("fp16 not supported")

    monkeypatch.setattr(gradient_checks, "runner_loss_and_grad", fake_runner(interrupt={"torch-cpu"}))
    result = cli(*PARITY, "--provider", "cpu,torch", "--out", tmp_path, "--name", "cut", cwd=tmp_path)
    assert result.returncode == 130
    assert f"error: parity interrupted; kept {tmp_path / 'cut.json'} with the 1 rows measured so far (Ctrl-C)" in flat(result.stderr)


@pytest.fixture
def interrupted_bench(monkeypatch):
    """The bench's first group is interrupted by ``cause``, through the CLI's own SIGTERM handler when it is SIGTERM."""
    from onnxstyle import console
    from onnxstyle.bench import run as bench

    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {})

    def interrupt_with(cause):
        def group(*args, **kwargs):
            if cause == "SIGTERM":
                console.on_sigterm(signal.SIGTERM, None)
            raise KeyboardInterrupt

        monkeypatch.setattr(bench, "run_group", group)

    return interrupt_with


BENCH = ["bench", "--provider", "cpu", "--model", "nin", "--sizes", "64", "--iterations", "1", "--runs", "1", "--warmup", "0", "--weights", "synthetic", "--no-check"]


@pytest.mark.parametrize("cause", ["SIGTERM", "Ctrl-C"])
def test_an_interrupted_bench_names_the_signal(cli, tmp_path, interrupted_bench, cause):
    interrupted_bench(cause)
    result = cli(*BENCH, "--out", tmp_path, "--name", "cut", cwd=tmp_path)
    assert result.returncode == 130, result.stderr
    assert f"error: bench interrupted; kept {tmp_path / 'cut.json'} with the 0 cells measured ({cause})" in flat(result.stderr)
    (cell,) = json.loads((tmp_path / "cut.json").read_text())["cells"]
    assert cell["status"] == "interrupted" and cell["reason"] == f"{cause} before this cell finished"


@pytest.mark.slow
def test_a_sigtermed_bench_process_says_sigterm(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", *BENCH[:6], "64,96,128", *BENCH[7:], "--out", str(tmp_path), "--name", "term"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "ONNXSTYLE_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "it/min" not in process.stderr.readline():
        pass
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "(SIGTERM)" in stderr and "Ctrl-C" not in stderr, stderr
    reasons = [cell["reason"] for cell in json.loads((tmp_path / "term.json").read_text())["cells"] if cell["status"] == "interrupted"]
    assert reasons == ["SIGTERM before this cell finished"]


def test_weights_verify_with_nothing_verified_or_a_bad_file_fails(cli, tmp_path, monkeypatch):
    from onnxstyle import weights

    monkeypatch.setattr(weights, "find_cached", lambda entry: None)
    result = cli("weights", "verify")
    assert result.returncode == 6 and "error: no weight files are cached, so nothing was verified" in flat(result.stderr)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1024))
    result = cli("weights", "verify", garbage)
    assert result.returncode == 5 and f"bad {garbage}:" in flat(result.stdout)
    assert f"error: 1 of 1 failed verification; the first, {garbage}: " in flat(result.stderr)


def test_a_usable_provider_whose_graph_fails_fails_the_check(cli, monkeypatch):
    from onnxstyle.engines import onnxruntime_engine

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("EP refused the graph")

    monkeypatch.setattr(onnxruntime_engine, "OnnxRuntimeEngine", Broken)
    result = cli("providers", "--check")
    assert result.returncode == ProviderError.exit_code, result.stderr
    assert "ort-cpu: the loss graph fails: EP refused the graph" in flat(result.stdout)
    assert "error: provider check failed for ort-cpu" in flat(result.stderr)
