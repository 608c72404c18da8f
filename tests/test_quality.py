"""Time to quality: configurations parsed, bands found on the common yardstick, a real short run, bad input."""

import pytest

from onnxstyle.bench import Runner
from onnxstyle.errors import OnnxstyleError, UsageError
from onnxstyle.quality import QualityConfig, QualityReport, QualityRun, band_times, converge, parse_configs, speedup_to_band, table_rows


def test_configurations_parse_with_defaults_and_refuse_nonsense():
    assert parse_configs("cpu,torch:bf16,eager") == [
        QualityConfig(Runner("onnxruntime", "cpu"), "fp32", "lbfgs"), QualityConfig(Runner("torch", "cpu"), "bf16", "lbfgs"),
        QualityConfig(Runner("eager", "cpu"), "fp32", "adam"),
    ]
    for bad, message in (("cpu:fp32:sgd", "unknown optimizer"), ("eager:fp32:lbfgs", "plain Adam loop"), ("cpu,,torch", "empty configuration"), ("tpu", "unknown provider")):
        with pytest.raises(UsageError, match=message):
            parse_configs(bad)


def test_bands_are_relative_to_the_best_final_loss_of_any_run():
    fast = QualityRun("torch-cpu bf16 lbfgs", 256, setup_seconds=1.0, seconds=10.0, evaluations=50, times=[0, 2, 4, 6], yardstick=[100.0, 20.0, 10.4, 10.0])
    eager = QualityRun("eager-cpu fp32 adam", 256, setup_seconds=1.0, seconds=10.0, evaluations=20, times=[0, 4, 8, 10], yardstick=[100.0, 50.0, 10.45, 10.2])
    slow = QualityRun("ort-cpu fp32 adam", 256, setup_seconds=1.0, seconds=10.0, evaluations=20, times=[0, 5, 10], yardstick=[100.0, 60.0, 30.0])
    band_times([fast, eager, slow])
    assert fast.to_band == {"5%": 4, "1%": 6} and eager.to_band == {"5%": 8, "1%": None} and slow.to_band == {"5%": None, "1%": None}
    report = QualityReport([fast, eager, slow], {}, {}, "vgg19-q8")
    assert speedup_to_band(report, fast) == (2.0, False)  # 8 s against 4 s
    assert speedup_to_band(report, fast, "1%") == (10 / 6, True)  # eager never came within 1%: at least its 10 s
    assert speedup_to_band(report, slow) is None and speedup_to_band(report, eager) is None
    rows = {row[1]: row for row in table_rows(report)}
    assert rows["torch-cpu bf16 lbfgs"][7] == "2.00×" and rows["ort-cpu fp32 adam"][5] == "not reached"


def test_a_short_real_run_scores_every_snapshot_and_refuses_runs_shorter_than_an_iteration():
    configs = [QualityConfig(Runner("onnxruntime", "cpu"), "fp32", "lbfgs"), QualityConfig(Runner("eager", "cpu"), "fp32", "adam")]
    report = converge(configs=configs, sizes=[64], seconds=[3.0], weights="vgg19-q8", threads=2)
    for run in report.runs:
        assert run.status == "ok" and run.evaluations > 3 and len(run.yardstick) == len(run.times) >= 3
        assert run.yardstick[-1] < run.yardstick[0]  # the best image so far only improves
        assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(run.yardstick, run.yardstick[1:]))
    assert any(run.to_band["5%"] is not None for run in report.runs)
    with pytest.raises(OnnxstyleError, match="shorter than one iteration; give more --seconds"):
        converge(configs=configs[:1], sizes=[64], seconds=[1e-6], weights="vgg19-q8", threads=2)
    with pytest.raises(UsageError, match="--seconds needs one positive number, or one per size"):
        converge(configs=configs, sizes=[64, 96], seconds=[1.0, 2.0, 3.0])
