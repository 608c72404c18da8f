"""Reports: schema round trip, rendering, files, comparison, and bad input through the CLI."""

import csv
import io
import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from onnxstyle.bench.records import Cell, GemmRate, summarize
from onnxstyle.report import (
    SCHEMA_VERSION,
    Report,
    ReportError,
    load_report,
    machine_differences,
    new_report,
    relative_speeds,
    speed_table,
    study_figure,
    to_csv,
    to_markdown,
    write_report,
)


def measured(runner, model, side, rates, **extra):
    cell = Cell(runner, model, side, side, status="ok", threads=2, weights="synthetic (timing only)", **extra)
    cell.windows = [{"iterations": 3, "seconds": 180.0 / rate, "engine_seconds": 170.0 / rate} for rate in rates]
    cell.iteration_seconds = [60.0 / rate for rate in rates for _ in range(3)]
    cell.stats = asdict(summarize(rates))
    cell.gflop_per_iteration = 20.0
    cell.gflops = 20.0 * cell.stats["median"] / 60
    cell.roof_share = cell.gflops / 400.0
    cell.peak_rss_bytes = 2**30
    cell.setup_seconds, cell.first_iteration_seconds, cell.overhead = 1.5, 0.2, 0.02
    cell.check = {"grad_error": 2e-6, "loss_error": 1e-7, "ok": True}
    return cell


def sample_report(scale=1.0, cpu="Test CPU"):
    cells = [
        measured("ort-cpu", "vgg19", 128, [700 * scale, 720 * scale, 710 * scale]),
        measured("eager-cpu", "vgg19", 128, [560 * scale, 570 * scale, 565 * scale]),
        measured("ort-cpu", "vgg19", 64, [1900 * scale, 1950 * scale, 1920 * scale]),
        Cell("ort-cpu", "vgg19", 4096, 4096, status="skipped", reason="needs ≈40.0 GB, 20.0 GB free"),
        Cell("ort-cuda", "vgg19", 128, 128, status="skipped", reason="no NVIDIA driver (libcuda.so.1 not found)"),
    ]
    report = new_report(cells, {"runs": 3, "warmup": 1, "threads": 2}, {"cpu": GemmRate("cpu", 2048, 2, [390.0, 400.0])}, {"vgg19": "synthetic (timing only)"}, ["onnxstyle", "bench"], False)
    report.system["cpu"] = cpu
    return report


def test_schema_round_trip(tmp_path):
    report = sample_report()
    paths = write_report(report, tmp_path / "out", "run")
    assert set(paths) == {"json", "csv", "md", "png"}
    assert paths["png"].stat().st_size > 1000
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "onnxstyle.bench" and data["schema_version"] == SCHEMA_VERSION
    assert "system" in data and data["gemm"]["cpu"]["gflops"] == 400.0
    loaded = load_report(paths["json"])
    assert [asdict(cell) for cell in loaded.cells] == [asdict(cell) for cell in report.cells]
    assert loaded.options == report.options and loaded.weights == report.weights
    assert loaded.cells[0].iteration_seconds == report.cells[0].iteration_seconds


def test_tables_show_study_figures_ratios_and_skips():
    report = sample_report()
    text = to_markdown(report)
    assert "2016 CPU (i5-4460, Chainer)" in text and "71.4" in text and "94.2" in text
    assert "×9.9 vs 2016" in text  # 710 / 71.4
    assert "1.26×" in text  # ort-cpu 710 against eager-cpu 565 at 128 px
    assert "skipped: needs ≈40.0 GB, 20.0 GB free" in text
    assert "no NVIDIA driver" in text
    assert len(speed_table(report).rows) >= 4
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert rows[0]["median_it_per_min"] == "710.0" and float(rows[0]["speedup_vs_eager"]) == pytest.approx(710 / 565)
    assert rows[3]["status"] == "skipped"


def test_interleaved_cells_are_compared_window_by_window_within_rounds():
    from onnxstyle.report import paired_ratios, speedup

    # Load drifts 2x between rounds; each round's pair sees the same load, so the paired ratio stays 1.5
    # while the ratio of medians would not (the ORT windows are not the median rounds of eager's).
    ort = measured("ort-cpu", "vgg19", 128, [300.0, 600.0, 900.0], interleaved=True)
    eager = measured("eager-cpu", "vgg19", 128, [200.0, 400.0, 600.0], interleaved=True)
    for index, window in enumerate(ort.windows):
        window["round"] = index
    for index, window in enumerate(eager.windows):
        window["round"] = index
    eager.windows = [eager.windows[2], eager.windows[0], eager.windows[1]]  # order on disk is irrelevant
    report = new_report([ort, eager], {"interleave": True, "runs": 3}, {}, {}, ["onnxstyle", "bench"], False)
    assert paired_ratios(ort, eager) == pytest.approx([1.5, 1.5, 1.5])
    assert speedup(report, ort) == pytest.approx(1.5)
    assert "interleaved" in to_markdown(report)
    ort.interleaved = False  # sequential cells: the ratio of medians
    assert paired_ratios(ort, eager) == [] and speedup(report, ort) == pytest.approx(600 / 400)


def test_reduced_precision_cells_show_their_gain_over_fp32():
    from onnxstyle.report import precision_speedup

    fp32 = measured("torch-cpu", "vgg19", 128, [400.0, 410.0, 420.0])
    bf16 = measured("torch-cpu", "vgg19", 128, [800.0, 820.0, 840.0], precision="bf16")
    report = new_report([fp32, bf16], {}, {}, {}, ["onnxstyle", "bench"], False)
    assert precision_speedup(report, bf16) == pytest.approx(2.0) and precision_speedup(report, fp32) is None
    assert "2.00×" in to_markdown(report)
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert rows[0]["speedup_vs_fp32"] == "" and float(rows[1]["speedup_vs_fp32"]) == pytest.approx(2.0)


def test_study_lookup():
    assert study_figure("vgg19", "ort-cpu", 128, 128) == (True, 71.4)
    assert study_figure("vgg19", "ort-cuda", 512, 512) == (True, None)  # the study's core dump
    assert study_figure("nin", "eager-cpu", 64, 64) == (False, None)
    assert study_figure("vgg19", "ort-cpu", 128, 96) == (False, None)


def test_compare_ratios_with_uncertainty_and_machine_differences():
    slow, fast = sample_report(1.0, "Old CPU"), sample_report(2.0, "New CPU")
    ratios = relative_speeds(slow, fast)
    assert len(ratios) == 3
    assert all(ratio.ratio == pytest.approx(2.0) for ratio in ratios)
    assert all(0 < ratio.uncertainty < 0.1 for ratio in ratios)
    differences = machine_differences([slow, fast])
    assert ["cpu", "Old CPU", "New CPU"] in differences


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "is not valid JSON"),
        ('{"hello": "world"}', "is not an onnxstyle bench report"),
        ('{"schema": "onnxstyle.bench", "schema_version": 99, "cells": []}', "schema version 99"),
        ('{"schema": "onnxstyle.bench", "schema_version": 1, "cells": [{"runner": "x"}]}', "is damaged: cell 1 .* has no model"),
    ],
)
def test_foreign_or_corrupt_reports_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ReportError, match=message):
        load_report(path)
    with pytest.raises(ReportError, match="does not exist"):
        load_report(tmp_path / "missing.json")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxstyle.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_report_commands_and_their_errors(cli, tmp_path):
    first = write_report(sample_report(1.0, "Old CPU"), tmp_path, "a")["json"]
    second = write_report(sample_report(1.5, "New CPU"), tmp_path, "b")["json"]
    shown = cli("report", "show", str(first))
    assert shown.returncode == 0, shown.stderr
    assert "iterations per minute" in shown.stdout and "2016 CPU" in shown.stdout
    compared = cli("report", "compare", str(first), str(second), "--plot", str(tmp_path / "cmp.png"), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "how the machines and software differ" in compared.stdout and "New CPU" in compared.stdout
    assert "1.50× ±" in compared.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    (tmp_path / "foreign.json").write_text('{"a": 1}')
    bad = cli("report", "show", str(tmp_path / "foreign.json"))
    assert bad.returncode == 10 and "is not an onnxstyle report" in bad.stderr and "Traceback" not in bad.stderr
    alone = cli("report", "compare", str(first))
    assert alone.returncode == 2 and "at least two reports" in alone.stderr


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--provider", "tpu"], 2, "unknown provider 'tpu'"),
        (["--provider", "cuda"], 8, "ort-cuda is not usable here"),
        (["--model", "alexnet"], 2, "unknown backbone"),
        (["--sizes", "0"], 2, "invalid size"),
        (["--sizes", ""], 2, "--sizes"),
        (["--precision", "fp64"], 2, "supported: fp32"),
        (["--out", "/proc/onnxstyle-reports"], 4, "cannot write reports"),
        (["--env", "OMP_WAIT_POLICY"], 2, "--env needs KEY=VALUE, got 'OMP_WAIT_POLICY'"),
    ],
)
def test_bench_bad_input(cli, tmp_path, args, code, message):
    result = cli("bench", *args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bench_end_to_end_writes_four_reports(tmp_path):
    result = run(
        "bench", "--provider", "cpu,eager", "--model", "nin", "--sizes", "64,80x64", "--iterations", "2", "--runs", "2",
        "--warmup", "0", "--weights", "synthetic", "--out", str(tmp_path / "r"), "--name", "t", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for suffix in ("json", "csv", "md", "png"):
        assert (tmp_path / "r" / f"t.{suffix}").is_file()
    report = load_report(tmp_path / "r" / "t.json")
    assert [(c.runner, c.width, c.height, c.status) for c in report.cells] == [
        ("ort-cpu", 64, 64, "ok"), ("eager-cpu", 64, 64, "ok"), ("ort-cpu", 80, 64, "ok"), ("eager-cpu", 80, 64, "ok")
    ]  # runners of one size together, their windows interleaved, so their ratio is measured under one load
    assert all(cell.interleaved and [w["round"] for w in cell.windows] == [0, 1] for cell in report.cells)
    assert report.options["interleave"] is True
    ort = report.cells[0]
    assert ort.engine["provider_effective"] == "CPUExecutionProvider"
    assert ort.check["ok"] and ort.peak_rss_bytes > 0 and ort.gflops > 0 and 0 < ort.roof_share
    assert len(ort.iteration_seconds) == 4 and ort.stats["n"] == 2
    # each runner in its own worker: ORT's pool owns the cores, torch runs the optimiser step on one thread
    assert ort.thread_counts["torch"] == 1 and ort.thread_counts["onnxruntime_intra_op"] == ort.threads
    eager = report.cells[1]
    assert eager.thread_counts["torch"] == eager.threads and "onnxruntime_intra_op" not in eager.thread_counts
    assert ort.environment["OMP_NUM_THREADS"] == "1" and eager.environment["OMP_NUM_THREADS"] == str(eager.threads)
    assert ort.peak_rss_bytes > ort.rss_before_bytes > 0 and ort.peak_rss_bytes != eager.peak_rss_bytes
    sizes = {(cell.width, cell.height): cell.inputs_sha256 for cell in report.cells}
    assert all(cell.inputs_sha256 == sizes[(cell.width, cell.height)] for cell in report.cells) and len(set(sizes.values())) == 2
    assert all({"cpu_seconds", "other_cpu_seconds", "bench_cpu_seconds", "steal_seconds"} <= set(w) for w in ort.windows)
    verdict = json.loads((tmp_path / "r" / "t.json").read_text())["verdict"]
    assert result.stdout.strip().splitlines()[-1] == verdict["line"]
    assert verdict["line"].startswith("trusted: all 4 measured cells" if verdict["trusted"] else "NOT TRUSTED:")
    assert "× eager" in result.stdout or "×eager" in result.stdout
    assert isinstance(report, Report) and report.system["python"]


def test_report_show_reads_parity_and_cluster_scale_reports_by_their_schema(cli, tmp_path):
    from pathlib import Path

    from onnxstyle.report.parity import ParityRow, parity_files

    rows = [
        ParityRow("vgg19", 256, 256, "ort-cpu", "fp32", loss_error=2e-7, grad_error=3e-6, seconds=4.0),
        ParityRow("vgg19", 256, 256, "ort-cuda", "fp32", status="skipped", error="not usable here"),
    ]
    (tmp_path / "p.json").write_text(parity_files(rows, {"cpu": "test CPU"})["json"])
    shown = cli("report", "show", tmp_path / "p.json")
    assert shown.returncode == 0, shown.stderr
    assert "| vgg19 | 256x256 | ort-cpu | fp32 | 3.0e-06 | 2.0e-07 | 4.0 |" in shown.stdout and "skipped: not usable here" in shown.stdout
    committed = Path(__file__).resolve().parents[1] / "reports" / "cluster-scale.json"  # written before reports named a schema
    scale = cli("report", "show", committed)
    assert scale.returncode == 0, scale.stderr
    assert scale.stdout.startswith("# Tiled stylization over N nodes: 7680×4320") and "| 64 |" in scale.stdout
    damaged = json.loads(parity_files(rows, {})["json"])
    damaged["rows"][0]["grad_error"] = "tiny"
    (tmp_path / "bad.json").write_text(json.dumps(damaged))
    refused = cli("report", "show", tmp_path / "bad.json")
    assert refused.returncode == 10 and "is damaged: row 1 has grad_error = 'tiny', not a number" in refused.stderr
    (tmp_path / "odd.json").write_text(json.dumps({"kind": "something-else"}))
    assert cli("report", "show", tmp_path / "odd.json").returncode == 10
