"""converge fails well: bad options refused before any work, one failing or killed configuration fails alone,
nothing measured exits with its cause's code, and Ctrl-C/SIGTERM keeps the report and says what never ran."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

import onnxstyle.converge as quality
from onnxstyle.bench import run as bench_run
from onnxstyle.errors import OnnxstyleError, UsageError, WorkerError
from onnxstyle.converge import converge, parse_configs

FAST = ["--weights", "synthetic", "--configs", "torch:fp32:adam", "--sizes", "32", "--seconds", "1"]


def flat(text):
    return " ".join(text.split())


class FakeWorker:
    """The worker interface in this process: ``run_config`` answers with three snapshots, ``score`` with falling
    losses, unless ``faults`` says what the worker of a configuration (by its n-th start) does instead."""

    started: list[str] = []
    faults: dict[int, BaseException] = {}

    def __init__(self, label, environment, log_dir, connect=True):
        self.label = label
        FakeWorker.started.append(label)
        fault = FakeWorker.faults.get(len(FakeWorker.started))
        if isinstance(fault, WorkerError) and "start-up" in str(fault):
            raise fault

    def run(self, function, timeout, **kwargs):
        fault = FakeWorker.faults.get(len(FakeWorker.started))
        if fault is not None:
            raise fault
        if function.endswith("score"):
            return [3.0 - index for index in range(len(kwargs["images"]))]
        image = torch.zeros(1, 3, kwargs["size"], kwargs["size"]).half()
        return {"setup_seconds": 0.1, "seconds": 1.0, "evaluations": 3, "snapshots": [(0.0, 1, 3.0, image), (0.5, 2, 2.0, image), (1.0, 3, 1.0, image)]}

    def kill(self):
        pass

    def close(self):
        pass


@pytest.fixture
def fake_workers(monkeypatch):
    monkeypatch.setattr(bench_run, "open_worker", FakeWorker)
    FakeWorker.started, FakeWorker.faults = [], {}
    return FakeWorker


def killed(label, stage):
    return WorkerError(f"worker {label} was killed by SIGKILL (out of memory?) during {stage}")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--sizes", "8"], 2, "error: 8x8 is too small for vgg19 up to relu5_1: needs at least 16x16"),
        (["--sizes", "64x32"], 2, "converge runs square images; --sizes 64x32 is not square"),
        (["--sizes", "100000"], 2, "torch-cpu fp32 adam at 100000 px needs ≈"),
        (["--threads", "0"], 2, "--threads must be positive, got 0"),
        (["--threads", "-3"], 2, "--threads must be positive, got -3"),
        (["--seconds", "1e12"], 2, "each at most 86400 (24 h); got 1e+12"),
        (["--seconds", "inf"], 2, "--seconds needs one positive number, or one per size (1)"),
        (["--seconds", "0"], 2, "--seconds needs one positive number"),
        (["--seconds", "1,2"], 2, "or one per size (1), each at most 86400 (24 h); got 1, 2"),
        (["--seconds", "soon"], 2, "--seconds needs numbers such as 60 or 60,150"),
    ],
)
def test_bad_options_are_one_line_before_any_worker(cli, tmp_path, fake_workers, args, code, message):
    started = time.perf_counter()
    result = cli("converge", *FAST, *args, "--out", tmp_path)
    assert result.returncode == code, result.stderr
    assert message in flat(result.stderr) and flat(result.stderr).startswith("error:") and "Traceback" not in result.stderr
    assert fake_workers.started == [] and not list(tmp_path.iterdir())
    assert time.perf_counter() - started < 10


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unusable_runner_is_a_provider_error_before_any_worker(cli, tmp_path, fake_workers):
    result = cli("converge", *FAST, "--configs", "torch-cuda:fp32:adam", "--out", tmp_path)
    assert result.returncode == 8 and "torch-cuda is not usable here" in flat(result.stderr)
    assert fake_workers.started == []


def test_a_killed_worker_fails_its_configuration_only(cli, tmp_path, fake_workers):
    # workers in order: torch run, torch score, eager run (killed while starting), cpu run (killed running), cpu score
    fake_workers.faults = {3: killed("quality-eager-cpu-32", "start-up"), 4: killed("quality-ort-cpu-32", "run_config")}
    result = cli("converge", *FAST, "--configs", "torch:fp32:adam,eager,cpu:fp32:adam", "--out", tmp_path, "--name", "q")
    assert result.returncode == 0, result.stderr
    assert "time to quality" in result.stdout and "failed: worker quality-eager-cpu-32 was killed by SIGKILL" in flat(result.stdout)
    runs = {run["config"]: run for run in json.loads((tmp_path / "q.json").read_text())["runs"]}
    assert runs["torch-cpu fp32 adam"]["status"] == "ok" and runs["torch-cpu fp32 adam"]["yardstick"] == [3.0, 2.0, 1.0]
    assert runs["eager-cpu fp32 adam"]["status"] == "failed" and "killed by SIGKILL (out of memory?) during start-up" in runs["eager-cpu fp32 adam"]["reason"]
    assert runs["ort-cpu fp32 adam"]["status"] == "failed" and "during run_config" in runs["ort-cpu fp32 adam"]["reason"]


def test_a_failed_scoring_fails_that_configuration_only(fake_workers):
    fake_workers.faults = {2: killed("quality-score-32", "score")}
    report = converge(configs=parse_configs("torch:fp32:adam,eager"), sizes=[32], seconds=[1.0], weights="synthetic", threads=1)
    first, second = report.runs
    assert first.status == "failed" and first.reason.startswith("scoring failed: worker quality-score-32 was killed")
    assert second.status == "ok" and second.to_band["5%"] is not None


def test_nothing_measured_exits_with_the_code_of_its_cause(cli, tmp_path, fake_workers):
    bad_weights = WorkerError("/x/garbage.pth: not a readable torch checkpoint (UnpicklingError)")
    bad_weights.exit_code = 5  # as the real worker sends back a WeightsError
    fake_workers.faults = {1: bad_weights, 2: bad_weights}
    result = cli("converge", *FAST, "--configs", "torch:fp32:adam,eager", "--out", tmp_path, "--name", "q")
    assert result.returncode == 5, result.stderr
    assert "error: no configuration was measured: torch-cpu fp32 adam at 32 px: /x/garbage.pth: not a readable torch checkpoint" in flat(result.stderr)
    fake_workers.started, fake_workers.faults = [], {1: killed("quality-torch-cpu-32", "run_config")}
    with pytest.raises(OnnxstyleError, match="no configuration was measured: .*killed by SIGKILL") as raised:
        converge(configs=parse_configs("torch:fp32:adam"), sizes=[32], seconds=[1.0], weights="synthetic")
    assert raised.value.exit_code == 11


def test_only_skipped_configurations_are_a_usage_error(fake_workers, monkeypatch):
    monkeypatch.setattr(quality, "precision_support", lambda runner, precision: "bf16 not supported (fp32 only)")
    with pytest.raises(OnnxstyleError, match="no configuration was measured: torch-cpu bf16 lbfgs at 32 px: bf16 not supported") as raised:
        converge(configs=parse_configs("torch:bf16"), sizes=[32], seconds=[1.0], weights="synthetic")
    assert raised.value.exit_code == UsageError.exit_code and fake_workers.started == []


def test_ctrl_c_keeps_the_report_and_lists_what_never_ran(cli, tmp_path, fake_workers):
    fake_workers.faults = {3: KeyboardInterrupt()}  # during the second configuration at 32 px
    result = cli("converge", *FAST, "--configs", "torch:fp32:adam,eager", "--sizes", "32,48", "--out", tmp_path, "--name", "q")
    assert result.returncode == 130, result.stderr
    assert (
        f"error: converge interrupted; kept {tmp_path / 'q.json'} with 1 configuration measured; "
        "not run: torch-cpu:fp32:adam @ 48 px, eager-cpu:fp32:adam @ 48 px"
    ) in flat(result.stderr)
    assert "time to quality" in result.stdout
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["interrupted"] is True and saved["not_run"] == ["torch-cpu:fp32:adam @ 48 px", "eager-cpu:fp32:adam @ 48 px"]
    assert [(run["config"], run["status"]) for run in saved["runs"]] == [("torch-cpu fp32 adam", "ok"), ("eager-cpu fp32 adam", "interrupted")]
    assert parse_configs("torch-cpu:fp32:adam,eager-cpu:fp32:adam") == parse_configs("torch:fp32:adam,eager")  # not_run pastes back


@pytest.mark.slow
def test_a_real_worker_killed_then_sigterm(tmp_path):
    """Real workers: the second configuration's worker is SIGKILLed, the run goes on; SIGTERM during the third
    saves the report with the fourth as not run, and exits 130."""
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "converge", "--weights", "synthetic", "--sizes", "32", "--seconds", "1", "--threads", "1",
         "--configs", "torch:fp32:adam,eager,torch:fp32:lbfgs,cpu:fp32:adam", "--out", str(tmp_path), "--name", "q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    parent, seen = psutil.Process(process.pid), []
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        for child in parent.children():
            try:
                worker = "onnxstyle.workers" in child.cmdline()
            except psutil.Error:
                continue
            if worker and child.pid not in seen:
                seen.append(child.pid)
                if len(seen) == 3:  # torch run, torch score, then the eager run's worker
                    child.kill()
                if len(seen) == 5:  # eager failed (no score worker), torch lbfgs run, then its score worker
                    process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "not run: ort-cpu:fp32:adam @ 32 px" in flat(stderr) and "Traceback" not in stderr
    saved = json.loads((tmp_path / "q.json").read_text())
    statuses = [(run["config"], run["status"]) for run in saved["runs"]]
    assert statuses == [("torch-cpu fp32 adam", "ok"), ("eager-cpu fp32 adam", "failed"), ("torch-cpu fp32 lbfgs", "interrupted")]
    assert "SIGKILL" in saved["runs"][1]["reason"] and saved["interrupted"] is True and "time to quality" in stdout


@pytest.mark.slow
def test_real_bad_weights_exit_5_with_the_loader_s_line(cli, tmp_path):
    garbage = tmp_path / "garbage\x1b[2J.pth"  # a control character in the name is shown, never acted on
    garbage.write_bytes(bytes(range(256)) * 16)
    result = cli("converge", "--weights", garbage, "--configs", "eager", "--sizes", "32", "--seconds", "1", "--threads", "1", "--out", tmp_path / "r")
    assert result.returncode == 5, result.stderr
    assert "no configuration was measured: eager-cpu fp32 adam at 32 px:" in flat(result.stderr) and "not a readable torch checkpoint" in flat(result.stderr)
    assert "\x1b" not in result.stderr and "garbage\\x1b[2J.pth" in result.stderr
