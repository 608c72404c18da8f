"""--engine auto: candidates, the probe and its cache, the one line, and the evidence its rules rest on."""

import json
from pathlib import Path

import pytest

from onnxstyle import auto
from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec
from onnxstyle.errors import UsageError
from onnxstyle.runners import Runner
from onnxstyle.weights import resolve

REPORTS = Path(__file__).resolve().parents[1] / "reports"
ORT, TORCH, GPU = Runner("onnxruntime", "cpu"), Runner("torch", "cpu"), Runner("onnxruntime", "cuda")
PRECISIONS = {ORT: ("fp32", "fp16"), TORCH: ("fp32", "bf16"), GPU: ("fp32", "tf32", "fp16")}


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Three runners, with made-up precisions and seconds per evaluation; the cache in a folder of the test's own."""
    monkeypatch.setenv(auto.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(auto, "select_runners", lambda text: ([ORT, TORCH, Runner("eager", "cpu")], {}))
    monkeypatch.setattr(auto, "supported", lambda engine, device: (PRECISIONS[Runner(engine, device)], "made up"))
    probed = []
    speeds = {"ort-cpu fp32": 0.4, "torch-cpu fp32": 0.7, "torch-cpu bf16": 0.2}

    def probe(candidate, spec, side, threads, clock):
        probed.append((candidate.label, side))
        if candidate.label not in speeds:
            raise RuntimeError("no kernel for this")
        return speeds[candidate.label], object()

    monkeypatch.setattr(auto, "probe", probe)
    return probed


@pytest.fixture(scope="module")
def spec():
    vgg = get_backbone("vgg19")
    return EngineSpec.defaults(vgg, resolve("synthetic", vgg))


def test_reduced_precision_is_a_candidate_only_where_converge_showed_its_quality(machine):
    found, left_out = auto.candidates()
    assert [candidate.label for candidate in found] == ["ort-cpu fp32", "torch-cpu fp32", "torch-cpu bf16"]
    assert left_out == ["ort-cpu fp16 (no converge run shows it reaching fp32 quality)"]
    asked, _ = auto.candidates(precision="fp16")  # asked for by name: the user's call, not auto's
    assert [candidate.label for candidate in asked] == ["ort-cpu fp16"]
    with pytest.raises(UsageError, match="no runner here runs tf32: ort-cpu runs fp32, fp16"):
        auto.candidates(precision="tf32")
    with pytest.raises(UsageError, match="--cuda-graph needs ONNX Runtime on cuda or tensorrt, and neither runs here"):
        auto.candidates(cuda_graph=True)


def test_the_fastest_is_chosen_measured_once_then_read_from_the_cache(machine, spec):
    choice = auto.choose(spec, 512)
    assert (choice.engine_name, choice.provider, choice.precision) == ("torch", "cpu", "bf16")
    assert sorted(machine) == [("ort-cpu fp32", 256), ("torch-cpu bf16", 256), ("torch-cpu fp32", 256)]  # capped at PROBE_SIDE
    assert choice.reason.startswith("auto: torch-cpu bf16 lbfgs — fastest at 256 px of torch-cpu bf16 200 ms/it, ort-cpu fp32 400 ms/it")
    assert "measured now, cached in" in choice.reason and "left out: ort-cpu fp16" in choice.reason
    assert choice.engine is None  # without a budget the run opens a fresh engine: bit-for-bit repeatable
    machine.clear()
    again = auto.choose(spec, 512)
    assert machine == [] and again.candidate == choice.candidate and f"cached in {auto.cache_path()}" in again.reason
    lines = auto.cache_lines()
    assert lines[0].startswith(f"cache: {auto.cache_path()} (1 measurement") and "vgg19 at 256 px" in lines[1]
    assert auto.clear_cache() and not auto.cache_path().exists() and not auto.clear_cache()


def test_explicit_choices_narrow_the_candidates(machine, spec):
    assert auto.choose(spec, 128, precision="fp32").candidate.label == "ort-cpu fp32"
    assert machine and all(side == 128 for _, side in machine)
    only = auto.choose(spec, 128, provider="torch-cpu", precision="fp32")
    assert only.candidate.label == "torch-cpu fp32" and "the only candidate here" in only.reason


def test_a_failed_probe_is_left_out_with_its_reason_and_not_retried(machine, spec, monkeypatch):
    PRECISIONS[ORT] = ("fp32", "fp16", "fp8")
    monkeypatch.setattr(auto, "REDUCED_PRECISION_QUALITY", {**auto.REDUCED_PRECISION_QUALITY, ("onnxruntime", "fp8"): "made up"})
    try:
        choice = auto.choose(spec, 256)
        assert "ort-cpu fp8 (its probe failed: no kernel for this)" in choice.reason
        machine.clear()
        assert "its probe failed" in auto.choose(spec, 256).reason and machine == []
    finally:
        PRECISIONS[ORT] = ("fp32", "fp16")


def test_under_a_budget_the_probe_stops_and_keeps_the_winners_engine(machine, spec):
    ticks = iter(range(0, 1000, 5))  # every clock reading 5 s later: the first probe spends 15% of 30 s
    choice = auto.choose(spec, 256, budget=30.0, clock=lambda: next(ticks))
    assert len(machine) == 1 and choice.engine is not None
    assert "(not probed: --max-time leaves 15% of itself to probing)" in choice.reason


def test_an_unreadable_cache_is_an_empty_one(machine, spec):
    auto.cache_path().parent.mkdir(parents=True)
    auto.cache_path().write_text("{not json")
    assert auto.read_cache() == {} and auto.cache_lines()[0].endswith("(empty: the next --engine auto run measures the candidates)")
    auto.choose(spec, 64)
    assert json.loads(auto.cache_path().read_text())["schema"] == auto.CACHE_SCHEMA


def test_the_cache_is_keyed_by_the_machine_and_its_software():
    facts = auto.machine()
    assert {"cpu", "cpus", "gpu", "torch", "onnxruntime", "plugin_eps", "onnxstyle"} <= set(facts)
    assert auto.machine_key(facts) != auto.machine_key({**facts, "torch": "0.0"})


def test_the_auto_command_shows_and_clears_the_cache(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(auto.CACHE_VARIABLE, str(tmp_path))
    shown = cli("auto")
    assert shown.returncode == 0 and f"cache: {tmp_path / 'auto.json'} (empty" in shown.stdout
    assert "nothing to delete" in cli("auto", "--clear").stdout
    (tmp_path / "auto.json").write_text(json.dumps({"schema": auto.CACHE_SCHEMA, "entries": {}}))
    assert "deleted" in cli("auto", "--clear").stdout and not (tmp_path / "auto.json").exists()


def test_stylize_says_what_auto_chose(cli, tmp_path):
    result = cli("stylize", "--demo", "--model", "nin", "--size", "64", "--iterations", "3", "--weights", "synthetic", "-o", "x.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("auto: ")]
    assert " fp32 lbfgs — " in line and ("fastest at 64 px of " in line or "the only candidate here" in line)


def _runs(report_name):
    data = json.loads((REPORTS / f"{report_name}.json").read_text())
    return [run for run in data["runs"] if run["status"] == "ok" and run["yardstick"]]


def test_each_reduced_precision_auto_may_choose_reached_fp32_quality_in_its_report():
    for (engine, precision), source in auto.REDUCED_PRECISION_QUALITY.items():
        runs = _runs(Path(source).stem)
        label = {"torch": "torch-", "onnxruntime": "ort-"}[engine]
        for size in {run["size"] for run in runs}:
            reduced = [run["yardstick"][-1] for run in runs if run["size"] == size and run["config"].startswith(label) and f" {precision} " in run["config"]]
            fp32 = [run["yardstick"][-1] for run in runs if run["size"] == size and " fp32 " in run["config"]]
            if reduced and fp32:
                assert min(reduced) <= min(fp32) * 1.01, f"{engine} {precision} at {size} px in {source}"


def test_auto_s_optimiser_reached_the_plain_loops_picture_soonest_in_the_reference():
    from onnxstyle.report.converge import QualityReport, speedup_to_eager_final

    for name in ("quality-512-cpu", "quality-512-amd"):
        report = QualityReport.from_json(json.loads((REPORTS / f"{name}.json").read_text()))
        for size in report.sizes():
            timed = [(found[0], run.config) for run in report.runs if run.size == size and (found := speedup_to_eager_final(report, run))]
            assert timed and f" {auto.AUTO_OPTIMIZER}" in min(timed)[1], f"{name} at {size} px"


def test_coarse_to_fine_the_default_from_512_px_beat_one_scale_in_the_reference():
    from onnxstyle.defaults import MULTI_SCALE_FROM
    from onnxstyle.report.converge import QualityReport, speedup_to_eager_final

    report = QualityReport.from_json(json.loads((REPORTS / "quality-512-amd.json").read_text()))
    assert MULTI_SCALE_FROM <= min(report.sizes())
    runs = {run.config: run for run in report.runs}
    one_scale, coarse_to_fine = runs["ort-cpu fp32 lbfgs"], runs["ort-cpu fp32 lbfgs c2f"]
    assert coarse_to_fine.final < one_scale.final
    assert speedup_to_eager_final(report, coarse_to_fine)[0] < speedup_to_eager_final(report, one_scale)[0]


def test_a_cached_figure_that_is_not_a_duration_is_measured_again(machine, spec):
    from onnxstyle.sysinfo import default_threads

    key = auto.entry_key(auto.machine(), spec, 256, default_threads())
    auto.cache_path().parent.mkdir(parents=True)
    damaged = {"ort-cpu fp32": float("nan"), "torch-cpu fp32": -1.0, "torch-cpu bf16": True}
    auto.cache_path().write_text(json.dumps({"schema": auto.CACHE_SCHEMA, "entries": {key: {"seconds": damaged}}}))
    choice = auto.choose(spec, 256)
    assert sorted(label for label, _ in machine) == ["ort-cpu fp32", "torch-cpu bf16", "torch-cpu fp32"]
    assert choice.candidate.label == "torch-cpu bf16"
