"""The console script: one line and a distinct exit code for every bad input, no tracebacks."""

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxstyle.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_version_and_env(cli):
    assert run("--version").stdout.startswith("onnxstyle ")  # the installed entry point, once
    facts = json.loads(cli("env", "--json").stdout)
    for key in ("os", "cpu", "ram_gb", "python", "torch", "onnxruntime", "ort_providers_compiled_in"):
        assert key in facts


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["stylize", "missing.png", "demo:style"], 3, "no such image file"),
        (["stylize", "--demo", "--model", "alexnet"], 2, "unknown backbone"),
        (["stylize", "--demo", "--style-layers", "relu4_2,relu7"], 2, "unknown layer(s) relu7"),
        (["stylize", "--demo", "-o", "/nonexistent/x.png"], 4, "does not exist"),
        (["stylize", "--demo", "--provider", "cuda"], 8, "not usable here"),
        (["stylize", "--demo", "--weights", "vgg19"], 6, "vgg19-dcbb9e9d.pth"),
        (["export", "vgg", "--opset", "21"], 2, "out of range"),
        (["stylize", "--demo", "--engine", "onnxruntime", "--precision", "bf16"], 2, "onnxruntime on cpu cannot run bf16: supported fp32, fp16 (ONNX Runtime's CPU provider has no bf16 Conv"),
        (["stylize", "--demo", "--engine", "torch", "--precision", "tf32"], 2, "cannot run tf32"),
        (["bench", "--provider", "cpu", "--precision", "bf16", "--sizes", "64"], 2, "no selected runner can run bf16: ort-cpu supports fp32, fp16"),
        (["stylize", "--demo", "--tile", "100"], 2, "use --tile 160 or more"),
        (["bench", "--provider", "cpu", "--model", "nin", "--tile", "64"], 2, "receptive field at relu10 (195 px)"),
        (["stylize", "--demo", "--engine", "onnxruntime", "--cuda-graph"], 2, "CUDA graphs need the cuda or tensorrt provider, not cpu"),
        (["stylize", "--demo", "--cuda-graph"], 2, "--cuda-graph needs ONNX Runtime on cuda or tensorrt, and neither runs here (usable: ort-cpu"),
        (["stylize", "--demo", "--precision", "tf32"], 2, "no runner here runs tf32: ort-cpu runs fp32"),
        (["bench", "--provider", "cpu", "--cuda-graph", "--sizes", "64"], 2, "--cuda-graph applies to ONNX Runtime on cuda or tensorrt"),
        (["profile", "--model", "nin", "--conv", "fft"], 2, "--conv must be auto, direct or winograd"),
        (["profile", "--model", "vgg", "--size", "8"], 2, "8x8 is too small for vgg19"),
        (["profile", "--model", "nin", "--provider", "cuda"], 8, "not usable here"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tmp_path, args, code, message):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.png"))


def test_a_precision_no_selected_runner_can_run_names_the_runners_that_can_here(cli, tmp_path):
    """Which runners can run bf16 is the machine's: torch on CPUs with AVX-512-BF16/AMX and on bf16 GPUs, never ORT."""
    import torch

    from onnxstyle.precision import supported

    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    able = sorted(f"{engine}-{device}" for engine in ("eager", "torch") for device in devices if "bf16" in supported(engine, device)[0])
    result = cli("bench", "--provider", "cpu", "--precision", "bf16", "--sizes", "64", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (f"runners that can: {', '.join(able)}" if able else "no runner here can") in result.stderr


def test_profile_prints_operators_and_nodes(cli, tmp_path):
    result = cli("profile", "--model", "nin", "--size", "64", "--runs", "1", "--warmup", "0", "--top", "2", "--weights", "synthetic", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ms per loss+gradient run" in result.stdout and "by operator" in result.stdout and "slowest 2 nodes" in result.stdout
    assert "Conv" in result.stdout


def test_demo_and_export_end_to_end(tmp_path):
    result = run("stylize", "--demo", "--model", "nin", "--size", "64", "--iterations", "20", "-o", "demo.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "timing only" in result.stderr and "wrote demo.png" in result.stdout
    exported = run("export", "nin", "--weights", "synthetic", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(list((tmp_path / "models").glob("nin-max-synthetic-*.loss.onnx"))) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["bench", "--nope"], "No such option: --nope"),
        (["bench", "--runs", "abc"], "Invalid value for '--runs'"),
        (["stylize", "--size"], "Option '--size' requires an argument"),
        (["nocommand"], "No such command 'nocommand'"),
        (["report", "show"], "Missing argument"),
    ],
)
def test_a_bad_flag_is_one_error_line_not_a_box(cli, args, message):
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "╭" not in result.stderr


def test_no_arguments_shows_the_help(cli):
    result = cli()
    assert result.returncode == 2
    assert "Usage:" in result.stdout and "stylize" in result.stdout


def test_stylize_max_time_is_checked_before_any_work(cli):
    result = cli("stylize", "--demo", "--max-time", "-5")
    assert result.returncode == 2 and "--max-time must be a finite number above 0" in result.stderr


@pytest.mark.parametrize(("flags", "expected"), [([], 100), (["--max-time", "30"], 10**9), (["--max-time", "30", "--iterations", "7"], 7)])
def test_the_demo_s_iterations_give_way_to_a_time_budget(cli, monkeypatch, tmp_path, flags, expected):
    from onnxstyle import stylize as module

    seen = {}

    def fake(*args, config, iterations, **kwargs):
        seen["iterations"] = iterations
        raise SystemExit(0)

    monkeypatch.setattr(module, "stylize_scales", fake)
    assert cli("stylize", "--demo", "-o", tmp_path / "out.png", *flags).returncode == 0
    assert seen["iterations"] == expected
