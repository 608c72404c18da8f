"""Time to quality: configurations parsed, bands found on the common yardstick, a real short run, bad input."""

import pytest

from onnxstyle.errors import OnnxstyleError, UsageError
from onnxstyle.converge import QualityConfig, converge, parse_configs
from onnxstyle.report import ReportWriter
from onnxstyle.report.converge import (
    QualityReport,
    QualityRun,
    band_times,
    measured_in,
    quality_files,
    quality_table,
    scored,
    speedup_to_band,
    speedup_to_eager_final,
    write_quality,
)
from onnxstyle.runners import Runner


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
    rows = {row[1]: row for row in quality_table(report).rows}
    assert rows["torch-cpu bf16 lbfgs"][7] == "2.00×" and rows["ort-cpu fp32 adam"][5] == "not reached"
    # the picture the eager loop ended with (10.2): the fast run had it at 6 s of eager's 10
    assert speedup_to_eager_final(report, fast) == (6, 10 / 6) and speedup_to_eager_final(report, slow) is None
    assert rows["torch-cpu bf16 lbfgs"][8:10] == ["6.0", "1.67×"] and rows["ort-cpu fp32 adam"][8] == "–"


def test_report_show_renders_a_quality_report(tmp_path, cli):
    run = QualityRun("torch-cpu bf16 lbfgs", 64, setup_seconds=1.0, seconds=10.0, evaluations=50, times=[0, 5], yardstick=[9.0, 3.0])
    eager = QualityRun("eager-cpu fp32 adam", 64, setup_seconds=1.0, seconds=10.0, evaluations=20, times=[0, 10], yardstick=[9.0, 4.0])
    band_times([run, eager])
    write_quality(QualityReport([run, eager], {"command": ["onnxstyle", "converge"]}, {"cpu": "test CPU"}, "vgg19-q8"), tmp_path, "q")
    shown = cli("report", "show", tmp_path / "q.json")
    assert shown.returncode == 0, shown.stderr
    assert "time to quality" in shown.stdout and "torch-cpu bf16 lbfgs" in shown.stdout and "2.00×" in shown.stdout


@pytest.mark.slow  # two real converge workers and their scoring (≈45 s on 2 vCPUs); `make test-all` runs it
def test_a_short_real_run_scores_every_snapshot_and_refuses_runs_shorter_than_an_iteration(tmp_path):
    configs = [QualityConfig(Runner("onnxruntime", "cpu"), "fp32", "lbfgs"), QualityConfig(Runner("eager", "cpu"), "fp32", "adam")]
    (tmp_path / "q.json").write_text('{"runs": [{"status": "ok", "yardstick": [1.0]}, {"status": "ok", "yardstick": [1.0]}, {"status": "ok", "yardstick": [1.0]}]}')
    seen = []
    with ReportWriter(tmp_path, "q", measured_in=measured_in) as writer:

        def save(report):  # what the CLI does after every configuration: a fuller report of that name is never replaced
            seen.append((len(report.runs), sorted(writer.write_files(scored(report), quality_files(report)))))

        # one thread: two OpenMP threads on a shared, busy 2-vCPU machine ran the eager step 3-7× slower
        report = converge(configs=configs, sizes=[64], seconds=[3.0], weights="vgg19-q8", threads=1, on_update=save)
    assert seen == [(1, ["json", "md", "png"]), (2, ["json", "md", "png"])]
    assert (tmp_path / "q.partial.json").exists() and measured_in(tmp_path / "q.json") == 3
    for run in report.runs:
        assert run.status == "ok" and run.evaluations >= 3 and len(run.yardstick) == len(run.times) >= 3  # 3 s, even on a busy machine
        assert run.yardstick[-1] < run.yardstick[0]  # the best image so far only improves
        assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(run.yardstick, run.yardstick[1:]))
    assert any(run.to_band["5%"] is not None for run in report.runs)
    with pytest.raises(OnnxstyleError, match="shorter than one iteration; give more --seconds"):
        converge(configs=configs[:1], sizes=[64], seconds=[1e-6], weights="vgg19-q8", threads=2)
    with pytest.raises(UsageError, match="--seconds needs one positive number, or one per size"):
        converge(configs=configs, sizes=[64, 96], seconds=[1.0, 2.0, 3.0])


def test_coarse_to_fine_auto_and_own_budgets_parse_and_print_back():
    configs = parse_configs("cpu:fp32:lbfgs:c2f,auto,auto@60,torch:bf16:adam@30")
    assert [config.spec for config in configs] == ["ort-cpu:fp32:lbfgs:c2f", "auto", "auto@60", "torch-cpu:bf16:adam@30"]
    assert [config.label for config in configs] == ["ort-cpu fp32 lbfgs c2f", "auto", "auto (60 s)", "torch-cpu bf16 adam (30 s)"]
    assert configs[0].coarse_to_fine and configs[1].auto and configs[2].budget(420) == 60 and configs[0].budget(420) == 420
    assert parse_configs(",".join(config.spec for config in configs)) == configs  # what a report's not_run lists pastes back
    for bad, message in (
        ("cpu:fp32:lbfgs:pyramid", "unknown schedule 'pyramid'"), ("eager:fp32:adam:c2f", "plain Adam loop a user would write at one size"),
        ("auto@0", "own budget"), ("auto@soon", "own budget"), ("cpu@1e9", "own budget"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_configs(bad)


def test_the_default_set_leaves_out_plugin_eps_that_are_not_installed(monkeypatch):
    import onnxstyle.converge as quality
    from onnxstyle import plugin_eps

    monkeypatch.setattr(plugin_eps, "installed_version", lambda ep: "1.8.1" if ep.key == "openvino" else None)
    with_openvino = {config.spec for config in quality.default_configs()}
    assert {"eager-cpu:fp32:adam", "ort-cpu:fp32:lbfgs:c2f", "auto", "ort-openvino:bf16:lbfgs"} <= with_openvino
    monkeypatch.setattr(plugin_eps, "installed_version", lambda ep: None)
    assert not any("openvino" in config.spec for config in quality.default_configs())


def test_the_fastest_configuration_and_what_a_budgeted_run_is_worth_in_the_plain_loops_time():
    from onnxstyle.report.converge import eager_time_to, fastest_lines, to_markdown

    eager = QualityRun("eager-cpu fp32 adam", 512, seconds=420.0, evaluations=100, times=[0, 100, 300, 420], yardstick=[100.0, 40.0, 20.0, 15.0])
    c2f = QualityRun("ort-cpu fp32 lbfgs c2f", 512, seconds=420.0, evaluations=300, times=[0, 20, 60, 420], yardstick=[100.0, 15.0, 10.4, 10.0])
    short = QualityRun("auto (60 s)", 512, seconds=60.0, evaluations=40, times=[0, 30, 60], yardstick=[100.0, 30.0, 19.0], note="auto: ort-cpu fp32 lbfgs")
    report = QualityReport([eager, c2f, short], {"seconds": {"512": 420}}, {"cpu": "test CPU"}, "vgg19-q8")
    band_times(report.runs)
    assert eager_time_to(report, short) == (420.0, False)  # eager's first snapshot at 19 or below: its final 15, at 420 s
    assert eager_time_to(report, QualityRun("x", 512, yardstick=[25.0], times=[1.0])) == (300.0, False)
    assert eager_time_to(report, c2f) == (420.0, True)  # never within its run
    (line,) = fastest_lines(report)
    assert line.startswith("fastest at 512 px: ort-cpu fp32 lbfgs c2f gave the plain loop's final picture in 20.0 s, 21.00× sooner")
    assert "within 5% of the best final loss at 60.0 s (14% of its 420 s)" in line
    markdown = to_markdown(report)
    assert f"- **{line}**" in markdown and "- auto (60 s) at 512 px: auto: ort-cpu fp32 lbfgs" in markdown
    rows = {row[1]: row for row in quality_table(report).rows}
    assert rows["ort-cpu fp32 lbfgs c2f"][10] == "> 420.0" and rows["auto (60 s)"][10] == "420.0"
