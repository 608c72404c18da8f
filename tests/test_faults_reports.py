"""Damaged, hostile and huge reports (issue 23): every one is refused in one line, nothing is lost or replaced."""

import errno
import json
import os

import pytest

from onnxstyle.errors import OutputError, ReportError, UsageError
from onnxstyle.report import ReportWriter, check_stem, load_report
from onnxstyle.report.checks import MAX_BYTES, MAX_ITEMS
from onnxstyle.report.converge import QualityReport, QualityRun, band_times, interrupted_line, to_markdown
from test_report import sample_report


def flat(text):
    return " ".join(text.split())


def edited(tmp_path, edit, name="edited", scale=1.0):
    """A good bench report's JSON edited by hand: ``edit(data)`` changes it (no chart drawn: fast)."""
    path = tmp_path / f"{name}.json"
    data = sample_report(scale).to_json()
    edit(data)
    path.write_text(json.dumps(data))
    return path


def quality(tmp_path, edit=None, name="q"):
    run = QualityRun("torch-cpu bf16 lbfgs", 64, setup_seconds=1.0, seconds=10.0, evaluations=50, times=[0, 5], iterations=[1, 9], own_losses=[9.5, 3.5], yardstick=[9.0, 3.0])
    eager = QualityRun("eager-cpu fp32 adam", 64, setup_seconds=1.0, seconds=10.0, evaluations=20, times=[0, 10], iterations=[1, 4], own_losses=[9.5, 4.5], yardstick=[9.0, 4.0])
    band_times([run, eager])
    report = QualityReport([run, eager], {"command": ["onnxstyle", "converge"]}, {"cpu": "test CPU"}, "vgg19-q8")
    path = tmp_path / f"{name}.json"
    data = report.to_json()
    if edit is not None:
        edit(data)
    path.write_text(json.dumps(data))
    return path


def refused(result, code, *parts):
    """One ``error:`` line with every part in it, the exit code, and nothing on stdout."""
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in flat(lines[0]), lines[0]
    return lines[0]


def cell(data, index=0):
    return data["cells"][index]


# ---------------------------------------------------------------- writing: names and full disks


def test_a_stem_the_writer_keeps_for_partial_reports_is_refused(tmp_path):
    for stem in ("base.partial", "base.partial-2"):
        with pytest.raises(UsageError, match="must not end in '.partial'"):
            check_stem(stem)
    assert check_stem("base.partially") == "base.partially"
    with pytest.raises(UsageError):
        ReportWriter(tmp_path, "base.partial")


def test_a_partial_report_is_never_replaced_by_one_with_fewer_cells(tmp_path):
    with ReportWriter(tmp_path, "base") as writer:
        full = writer.write(sample_report())["json"]  # 3 measured cells
    two = sample_report()
    two.cells = two.cells[:2]
    with ReportWriter(tmp_path, "base") as writer:
        assert writer.write(two)["json"].name == "base.partial.json"
    one = sample_report()
    one.cells = one.cells[:1]
    with ReportWriter(tmp_path, "base") as writer:  # a later rerun with less: beside the earlier partial, not over it
        assert writer.write(one)["json"].name == "base.partial-2.json"
        assert writer.write(two)["json"].name == "base.partial-2.json"  # its own partial grows in place
        assert "kept" in writer.kept and len(load_report(tmp_path / "base.partial.json").measured()) == 2
        assert writer.write(sample_report())["json"] == full  # caught up: the report, and the partials it covers go
    assert not (tmp_path / "base.partial.json").exists() and not (tmp_path / "base.partial-2.json").exists()
    assert len(load_report(full).measured()) == 3


def test_no_report_name_on_a_full_disk_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    import onnxstyle.report.formats as formats

    class Full:
        def __init__(self, handle, mode):
            os.close(handle)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise OSError(errno.ENOSPC, "No space left on device")

        def write(self, text):
            pass

    monkeypatch.setattr(formats.os, "fdopen", Full)
    with pytest.raises(OutputError, match="cannot write reports to .*No space left on device"):
        ReportWriter(tmp_path, "q")
    assert not list(tmp_path.glob("*.lock"))


# ---------------------------------------------------------------- reading: damaged and edited reports


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lambda data: cell(data).update(width=0), "cell 1 (vgg19 ort-cpu 0x128) has width = 0; it must be above zero"),
        (lambda data: cell(data).update(stats=None), "cell 1 (vgg19 ort-cpu 128x128) is marked measured but has no stats"),
        (lambda data: cell(data).update(windows=None), "cell 1 (vgg19 ort-cpu 128x128) has no windows"),
        (lambda data: cell(data)["stats"].update(median="fast"), "has median = 'fast', not a number"),
        (lambda data: cell(data)["stats"].update(median=float("nan")), "cell 1 (vgg19 ort-cpu 128x128) has a non-finite median"),
        (lambda data: cell(data, 2)["stats"].update(median=-5), "cell 3 (vgg19 ort-cpu 64x64) has median = -5; it must be above zero"),
        (lambda data: cell(data)["stats"].update(q1=-1.0), "has a negative q1"),
        (lambda data: cell(data)["stats"].update(max=1.0), "has stats out of order (min ≤ q1 ≤ median ≤ q3 ≤ max fails"),
        (lambda data: cell(data)["windows"][0].update(seconds=0), "window 1 has seconds = 0; it must be above zero"),
        (lambda data: cell(data).update(noisy="no"), "has noisy = 'no', not true or false"),
        (lambda data: data.update(interrupted="false"), "the report has interrupted = 'false', not true or false"),
        (lambda data: data["gemm"]["cpu"].update(gflops=float("inf")), "non-finite GEMM rate for cpu"),
        (lambda data: data.update(cells={"a": 1}), "it has no list of cells"),
        (lambda data: data["cells"].append("cell"), "cell 6 is not an object"),
    ],
)
def test_report_show_refuses_a_damaged_bench_report(cli, tmp_path, edit, problem):
    path = edited(tmp_path, edit)
    line = refused(cli("report", "show", path), 10, "is damaged:", problem)
    assert "trusted" not in line


def test_compare_refuses_a_nan_or_negative_figure_on_reading(cli, tmp_path):
    good = edited(tmp_path, lambda data: None, "good")
    for index, value in enumerate((float("nan"), -3.0)):
        bad = edited(tmp_path, lambda data, value=value: cell(data)["stats"].update(median=value), name=f"bad{index}")
        refused(cli("report", "compare", good, bad, "--plot", tmp_path / "c.png"), 10, f"bad{index}.json is damaged:", "median")
        assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lambda data: data["runs"][0].update(yardstick=[9.0, 3.0, 2.0]), "has series of unequal length (times 2, iterations 2, own_losses 2, yardstick 3)"),
        (lambda data: data["runs"][0].update(times=[0.0]), "has series of unequal length (times 1"),
        (lambda data: data["runs"][1].update(iterations=[1, 2, 3]), "run 2 (eager-cpu fp32 adam @ 64 px) has series of unequal length"),
        (lambda data: data["runs"][0].update(times=[], iterations=[], own_losses=[]), "has series of unequal length (times 0"),
        (lambda data: data["runs"][0].update(size="64"), "run 1 (torch-cpu bf16 lbfgs @ 64 px) has size = '64', not a whole number"),
        (lambda data: data["runs"][0].update(yardstick=[9.0, float("nan")]), "has a non-finite yardstick[1]"),
        (lambda data: data["runs"][0].update(evaluations="many"), "has evaluations = 'many', not a whole number"),
        (lambda data: data["runs"][0]["to_band"].update({"5%": -1}), "has a negative time to 5%"),
        (lambda data: data.update(not_run="all"), "the report has not_run = 'all', not a list"),
    ],
)
def test_report_show_refuses_a_damaged_quality_report(cli, tmp_path, edit, problem):
    refused(cli("report", "show", quality(tmp_path, edit)), 10, "q.json is damaged:", problem)


def test_reports_from_a_newer_onnxstyle_are_refused_the_same_way_for_either_kind(cli, tmp_path):
    bench = edited(tmp_path, lambda data: data.update(schema_version=99))
    converge = quality(tmp_path, lambda data: data.update(schema_version=99))
    for path in (bench, converge):
        refused(cli("report", "show", path), 10, f"{path.name} has schema version 99; this onnxstyle reads up to")


def test_huge_files_and_reports_are_refused_naming_the_limit(cli, tmp_path):
    huge = tmp_path / "huge.json"
    with huge.open("wb") as out:  # sparse: no disk used, and never parsed
        out.truncate(MAX_BYTES + 1)
    refused(cli("report", "show", huge), 10, f"onnxstyle reads reports of up to {MAX_BYTES // 2**20} MB")
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"schema": "onnxstyle.bench", "schema_version": 2, "cells": [{"runner": "x"}] * (MAX_ITEMS + 1)}))
    refused(cli("report", "show", many), 10, f"holds {MAX_ITEMS + 1:,} cells; onnxstyle reads reports of up to {MAX_ITEMS:,} cells")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    refused(cli("report", "show", deep), 10, "deep.json")


def test_a_file_of_another_kind_is_not_a_report(cli, tmp_path):
    (tmp_path / "other.json").write_text('{"kind": "weather"}')
    refused(cli("report", "show", tmp_path / "other.json"), 10, 'is not an onnxstyle report (no "schema": "onnxstyle.bench" or "onnxstyle.quality" or "onnxstyle.parity" or "onnxstyle.scale")')
    # a kind an older cluster-scale wrote is read by its own reader, which finds it empty
    (tmp_path / "scale.json").write_text('{"kind": "cluster-scale"}')
    refused(cli("report", "show", tmp_path / "scale.json"), 10, "is damaged")


# ---------------------------------------------------------------- hostile strings


def test_no_string_from_a_report_reaches_the_terminal_raw(cli, tmp_path):
    escape = "\x1b[31m"

    def hostile(data):
        for item in data["cells"]:
            item["runner"] = f"ort-cpu{escape}"
            item["reason"] = f"bell\x07{escape}"
        data["system"]["cpu"] = f"CPU{escape}\r"
        data["weights"]["vgg19"] = f"w{escape}"

    bad = edited(tmp_path, hostile)
    other = edited(tmp_path, hostile, name="other")
    shown = cli("report", "show", bad)
    assert shown.returncode == 0, shown.stderr
    compared = cli("report", "compare", bad, other, "--plot", tmp_path / "c.png")
    assert compared.returncode == 0, compared.stderr
    converge = quality(tmp_path, lambda data: data["runs"][0].update(config=f"evil{escape}", reason="x"))
    converged = cli("report", "show", converge)
    assert converged.returncode == 0, converged.stderr
    for text in (shown.stdout, compared.stdout, converged.stdout):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\\x1b[31m" in shown.stdout and "CPU\\x1b[31m\\x0d" in shown.stdout and "\\x07" in shown.stdout
    assert "\\x1b[31m" in compared.stdout and "evil\\x1b[31m" in converged.stdout
    damaged = edited(tmp_path, lambda data: cell(data).update(model=f"vgg{escape}", width=-1), name="damaged")
    line = refused(cli("report", "show", damaged), 10, "vgg\\x1b[31m")
    assert "\x1b" not in line


# ---------------------------------------------------------------- the comparison chart


def test_compare_never_replaces_a_file_that_is_not_its_chart(cli, tmp_path):
    first = edited(tmp_path, lambda data: None, "a")
    second = edited(tmp_path, lambda data: None, "b", scale=2.0)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n my holiday")
    refused(cli("report", "compare", first, second, "--plot", photo), 4, "photo.png exists; use --force to replace it")
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n my holiday"
    for suffix in ("png", "svg"):
        chart = tmp_path / f"chart.{suffix}"
        assert cli("report", "compare", first, second, "--plot", chart).returncode == 0
        again = cli("report", "compare", first, second, "--plot", chart)  # its own chart: replaced
        assert again.returncode == 0, again.stderr
    forced = cli("report", "compare", first, second, "--plot", photo, "--force")
    assert forced.returncode == 0, forced.stderr and photo.stat().st_size > 1000


# ---------------------------------------------------------------- interrupted converge runs


def test_an_interrupted_converge_report_names_what_never_ran(cli, tmp_path):
    labels = ["ort-cpu fp32 lbfgs @ 128 px", "eager-cpu fp32 adam @ 128 px"]
    path = quality(tmp_path, lambda data: data.update(interrupted=True, not_run=labels))
    report = QualityReport.from_json(json.loads(path.read_text()), str(path))
    assert report.interrupted and report.not_run == labels
    line = "interrupted: these configurations never ran: ort-cpu fp32 lbfgs @ 128 px, eager-cpu fp32 adam @ 128 px"
    assert interrupted_line(report) == line and line in to_markdown(report)
    shown = cli("report", "show", path)
    assert shown.returncode == 0, shown.stderr
    assert line in flat(shown.stdout) and "not run: interrupted before it started" in flat(shown.stdout)
    old = quality(tmp_path, lambda data: (data.pop("interrupted"), data.pop("not_run")), name="old")  # before the fields
    report = QualityReport.from_json(json.loads(old.read_text()), str(old))
    assert not report.interrupted and report.not_run == [] and interrupted_line(report) is None
    assert json.loads(path.read_text())["not_run"] == labels  # written by to_json


def test_committed_reports_still_read(tmp_path):
    from pathlib import Path

    from onnxstyle.report.loading import load_any

    for path in sorted(Path(__file__).parent.parent.glob("reports/*.json")):
        if "cluster-scale" in path.name:
            continue
        assert load_any(path) is not None


def test_report_errors_are_report_errors(tmp_path):
    with pytest.raises(ReportError):
        load_report(edited(tmp_path, lambda data: cell(data)["stats"].update(median=None)))
