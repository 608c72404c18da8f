"""The benchmark's method: runner parsing, statistics, FLOP and memory models, windows, skips, Ctrl-C."""

import math

import fake_loops
import pytest
import torch

from onnxstyle import memory
from onnxstyle.backbones import get_backbone
from onnxstyle.bench import run as bench
from onnxstyle.bench.gemm import measure_gemm
from onnxstyle.bench.options import BenchOptions, parse_models, parse_precisions, parse_sizes, window_plan
from onnxstyle.bench.records import Cell, summarize
from onnxstyle.bench.run import run_bench
from onnxstyle.engines import EngineSpec
from onnxstyle.errors import ProviderError, UsageError, WorkerError
from onnxstyle.gradient_checks import check_gradient
from onnxstyle.memory import forward_flops, iteration_flops
from onnxstyle.runners import Runner, parse_runner, select_runners
from onnxstyle.tiling import tile_for
from onnxstyle.weights import resolve


def test_summarize_median_quartiles_and_spread():
    stats = summarize([10.0, 12.0, 11.0, 13.0, 100.0])
    assert stats.median == 12.0
    assert (stats.min, stats.max, stats.n) == (10.0, 100.0, 5)
    assert stats.q1 == 11.0 and stats.q3 == 13.0
    assert stats.spread == pytest.approx(1 / 12)
    single = summarize([5.0])
    assert single.median == single.q1 == single.q3 == 5.0 and single.stdev == 0.0
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cpu", Runner("onnxruntime", "cpu")),
        ("ort-cpu", Runner("onnxruntime", "cpu")),
        ("onnxruntime:cuda", Runner("onnxruntime", "cuda")),
        ("trt", Runner("onnxruntime", "tensorrt")),
        ("TensorrtExecutionProvider", Runner("onnxruntime", "tensorrt")),
        ("torch", Runner("torch", "cpu")),
        ("torch-cuda", Runner("torch", "cuda")),
        ("eager", Runner("eager", "cpu")),
    ],
)
def test_parse_runner(text, expected):
    assert parse_runner(text) == expected


@pytest.mark.parametrize("text", ["tpu", "torch-mps", "", "eager-gpu"])
def test_unknown_runner_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_runner(text)


def test_runner_selection_never_falls_back_silently():
    with pytest.raises(ProviderError, match="ort-cuda is not usable here"):
        select_runners("cpu,cuda")
    usable, skipped = select_runners(None)
    assert Runner("onnxruntime", "cpu") in usable and Runner("eager", "cpu") in usable
    assert not skipped
    every, reasons = select_runners("all")
    assert Runner("onnxruntime", "cpu") in every
    assert reasons[Runner("torch", "cuda")] == "torch.cuda.is_available() is False"
    assert "libcuda.so.1" in reasons[Runner("onnxruntime", "cuda")]


def test_sizes_models_precisions():
    assert parse_sizes("64, 128,1920x1080,64") == [(64, 64), (128, 128), (1920, 1080)]
    for bad in ("", "64,,128", "0", "-5", "64x0", "big"):
        with pytest.raises(UsageError):
            parse_sizes(bad)
    assert [spec.name for spec in parse_models("vgg,nin,vgg19")] == ["vgg19", "nin"]
    with pytest.raises(UsageError):
        parse_models("alexnet")
    assert parse_precisions("fp32") == ["fp32"]
    with pytest.raises(UsageError, match="supported: fp32"):
        parse_precisions("fp64")


def test_flop_model_matches_the_reference_figures():
    vgg = get_backbone("vgg19")
    layers = ["relu4_2", *vgg.default_style_layers]
    for side, gflop in ((64, 2.96), (128, 11.83), (256, 47.34), (512, 189.35)):
        assert forward_flops(vgg, layers, side, side) / 1e9 == pytest.approx(gflop, rel=5e-3)
    total = iteration_flops(vgg, ["relu4_2"], vgg.default_style_layers, 128, 128)
    assert 2 * forward_flops(vgg, layers, 128, 128) < total < 2.2 * forward_flops(vgg, layers, 128, 128)
    with pytest.raises(UsageError, match="too small"):
        forward_flops(vgg, layers, 8, 8)


def test_options_reject_nonsense():
    vgg = [get_backbone("vgg19")]
    cpu = [Runner("onnxruntime", "cpu")]
    for kwargs in ({"iterations": 0}, {"duration": -1.0}, {"runs": 0}, {"warmup": -1}, {"threads": 0}):
        with pytest.raises(UsageError):
            BenchOptions(cpu, vgg, [(64, 64)], **kwargs)
    with pytest.raises(UsageError):
        BenchOptions(cpu, vgg, [(0, 64)])


def test_window_plan_fills_the_duration_or_uses_fixed_iterations():
    options = BenchOptions([], [], [], duration=6.0, runs=5)
    assert window_plan(options, 0.1) == 12
    assert window_plan(options, 100.0) == 1
    assert window_plan(BenchOptions([], [], [], iterations=7), 0.1) == 7


class InProcessHost:
    """The worker interface without a process: the scheduling tests run CellSession here, on a fake clock."""

    def __init__(self, label, environment, log_dir, connect=True):
        self.label, self.alive, self.hosted = label, True, None
        self.environment = environment

    def connect(self):
        pass

    def start(self, factory, timeout, **kwargs):
        from onnxstyle.workers import resolve_factory

        self.hosted = resolve_factory(factory)(**kwargs)

    def call(self, method, timeout, *, stage=None, **kwargs):
        try:
            return getattr(self.hosted, method)(**kwargs)
        except Exception as error:
            raise WorkerError(f"{type(error).__name__}: {error}") from None

    def run(self, function, timeout, **kwargs):
        from onnxstyle.workers import resolve_factory

        return resolve_factory(function)(**kwargs)

    def cpu_seconds(self):
        return 0.0

    def close(self):
        self.alive = False

    kill = close


@pytest.fixture
def in_process(monkeypatch):
    """Cells hosted in this process on fake_loops.CLOCK; torch's thread count restored afterwards."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(bench, "open_worker", InProcessHost)
    monkeypatch.setattr(bench.time, "perf_counter", fake_loops.CLOCK)
    fake_loops.ORDER.clear()
    yield fake_loops.CLOCK
    torch.set_num_threads(threads)


def pending_fake(name, runner=Runner("torch", "cpu"), **loop):
    recipe = bench.LoopRecipe("fake_loops:fake_loop", {"name": name, **loop})
    return bench.PendingCell(Cell(name, "vgg19", 64, 64, threads=1, gflop_per_iteration=1.0, estimate_bytes=2**20), runner, recipe)


ROOFS = {"cpu": bench.GemmRate("cpu", 8, 1, [1.0])}


def test_a_cell_times_setup_first_iteration_warmup_and_windows(in_process, tmp_path):
    pending = pending_fake("a", setup_time=2.5)
    bench.run_group([pending], BenchOptions([], [], [], iterations=4, runs=3, warmup=2), ROOFS, tmp_path)
    cell = pending.cell
    assert cell.status == "ok" and not cell.interleaved
    assert cell.setup_seconds == pytest.approx(2.5)
    assert cell.first_iteration_seconds == pytest.approx(0.01)
    assert len(fake_loops.ORDER) == 1 + 2 + 3 * 4
    assert len(cell.windows) == 3 and len(cell.iteration_seconds) == 12
    assert cell.stats["median"] == pytest.approx(6000.0)
    assert cell.overhead == pytest.approx(0.1)
    assert cell.final_loss == pytest.approx(1 / 15)
    assert cell.peak_rss_bytes >= cell.rss_before_bytes > 0
    assert cell.thread_counts["torch"] == 1 and cell.environment["OMP_NUM_THREADS"] == "1"
    window = cell.windows[0]
    assert min(window["cpu_seconds"], window["other_cpu_seconds"], window["bench_cpu_seconds"], window["busy_seconds"]) >= 0


def test_interleaved_cells_rotate_their_windows_round_by_round(in_process, tmp_path, monkeypatch):
    group = [pending_fake(name, engine_time=cost) for name, cost in (("a", 0.009), ("b", 0.019), ("c", 0.004))]
    options = BenchOptions([], [], [], iterations=2, runs=3, warmup=1)
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 2**40)
    assert bench.interleavable(group, options)
    bench.run_group(group, options, ROOFS, tmp_path)
    # set-up and warm-up one worker after another, then windows of two iterations in rounds abc, bca, cab
    assert "".join(fake_loops.ORDER) == "aabbcc" + "aabbcc" + "bbccaa" + "ccaabb"
    for pending in group:
        cell = pending.cell
        assert cell.status == "ok" and cell.interleaved
        assert [window["round"] for window in cell.windows] == [0, 1, 2]
    assert group[1].cell.median == pytest.approx(60 / 0.020)
    # Cells that would not fit together (each worker stays resident), tiled cells, lone cells and --sequential
    # run one after another.
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 3 * bench.WORKER_BASE_BYTES)
    assert not bench.interleavable(group, options)
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 2**40)
    assert not bench.interleavable(group[:1], options)
    options.interleave = False
    assert not bench.interleavable(group, options)


def test_a_failing_interleaved_cell_leaves_the_others_measured(in_process, tmp_path):
    good = pending_fake("good")
    bad = bench.PendingCell(Cell("bad", "nin", 64, 64, gflop_per_iteration=1.0), Runner("torch", "cpu"), bench.LoopRecipe("fake_loops:faulty_loop", {"fault": "raise", "at": 3}))
    bench.run_group([good, bad], BenchOptions([], [], [], iterations=2, runs=2, warmup=0), ROOFS, tmp_path)
    assert good.cell.status == "ok" and len(good.cell.windows) == 2
    assert bad.cell.status == "failed" and bad.cell.reason == "ValueError: the loop raised on purpose"


def test_noise_verdict_names_spread_neighbours_and_steal():
    from onnxstyle.interference import noise_reasons

    quiet = [{"seconds": 1.0, "cpus": 2, "other_cpu_seconds": 0.02, "bench_cpu_seconds": 0.01, "steal_seconds": 0.0}] * 4
    assert noise_reasons(quiet, [100.0, 101.0, 99.0, 100.5]) == []
    assert noise_reasons(quiet[:1], [100.0]) == []
    (spread,) = noise_reasons(quiet, [120.0, 80.0, 110.0, 90.0])
    assert spread["kind"] == "spread" and spread["text"] == "windows spread 25% (IQR/median > 10%)"
    hogged = [*quiet[:2], {"seconds": 2.0, "cpus": 2, "other_cpu_seconds": 1.9, "bench_cpu_seconds": 0.0, "steal_seconds": 0.3}]
    kinds = {reason["kind"]: reason["text"] for reason in noise_reasons(hogged, [100.0, 100.0, 100.0])}
    assert kinds["others"] == "other processes used 0.95 CPUs during window 3 (limit 0.25)"
    assert kinds["steal"].startswith("the hypervisor stole 0.15 CPUs during window 3")
    assert "spread" not in kinds and "bench" not in kinds
    # 30-ms windows read in 10-ms ticks on two CPUs cannot tell 0.7 CPUs of neighbours from rounding
    short = [{"seconds": 0.03, "cpus": 2, "other_cpu_seconds": 0.02, "bench_cpu_seconds": 0.0, "steal_seconds": 0.0}] * 2
    assert noise_reasons(short, [100.0, 100.0]) == []


def test_cells_that_would_not_fit_are_skipped_with_the_estimate(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 1200 * 2**20)
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {})
    options = BenchOptions([Runner("onnxruntime", "cpu")], [get_backbone("vgg19")], [(64, 64), (2048, 2048)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0, tile=0)
    cells, roofs, interrupted = run_bench(options)
    assert not interrupted
    small, large = cells
    assert small.status == "ok" and small.median > 0
    assert large.status == "skipped"
    assert large.reason.startswith("needs ≈") and large.reason.endswith("GB, 1.2 GB free")
    assert large.stats is None
    options.tile, options.sizes = None, [(2048, 2048)]  # automatic tiling cannot help with 1.2 GB either
    (large,), _, _ = run_bench(options)
    assert large.status == "skipped" and "does not fit even tiled" in large.reason and large.reason.endswith("1.2 GB free")


def test_cells_can_run_tiled_and_the_plain_loop_never_is(monkeypatch):
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {})
    options = BenchOptions([Runner("onnxruntime", "cpu"), Runner("eager", "cpu")], [get_backbone("nin")], [(512, 480)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0, tile=224)
    ort_cell, eager_cell = run_bench(options)[0]
    assert ort_cell.status == "ok" and ort_cell.tile == 224 and ort_cell.engine["tiling"]["core"] == 224 and ort_cell.engine["tiling"]["exact"]
    assert eager_cell.status == "ok" and eager_cell.tile is None
    vgg = EngineSpec.defaults(get_backbone("vgg19"), resolve("synthetic", get_backbone("vgg19")))
    assert tile_for("torch", vgg, 4096, 4096, None, 20 * 2**30)  # automatic
    assert tile_for("torch", vgg, 1024, 1024, 0, 20 * 2**30) is None  # --tile 0: never
    with pytest.raises(UsageError, match=r"^needs ≈44.3 GB, 20.0 GB free$"):  # ... and what does not fit untiled is refused
        tile_for("torch", vgg, 4096, 4096, 0, 20 * 2**30)
    assert tile_for("torch", vgg, 512, 512, None, 20 * 2**30) is None  # fits: untiled


def test_ctrl_c_keeps_finished_cells(monkeypatch):
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {"cpu": bench.GemmRate("cpu", 8, 1, [1.0])})
    real = bench.run_group
    calls = []

    def interrupting(group, *args, **kwargs):
        calls.append(group)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(group, *args, **kwargs)

    monkeypatch.setattr(bench, "run_group", interrupting)
    options = BenchOptions([Runner("onnxruntime", "cpu")], [get_backbone("nin")], [(64, 64), (96, 96), (128, 128)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0)
    cells, _, interrupted = run_bench(options)
    assert interrupted
    assert [cell.status for cell in cells] == ["ok", "interrupted", "not run"]  # the third size was never reached
    assert cells[0].median > 0


def test_too_small_sizes_are_skipped_not_crashed(monkeypatch):
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {})
    options = BenchOptions([Runner("torch", "cpu")], [get_backbone("vgg19")], [(8, 8)], weights="synthetic", check=False, iterations=1, runs=1)
    (cell,), _, _ = run_bench(options)
    assert cell.status == "skipped" and cell.reason == "8x8 is too small for vgg19 up to relu5_1: needs at least 16x16"


@pytest.mark.parametrize("runner", [Runner("onnxruntime", "cpu"), Runner("eager", "cpu")])
def test_gradient_check_against_torch_autograd(runner):
    nin = get_backbone("nin")
    result = check_gradient(runner, EngineSpec.defaults(nin, resolve("synthetic", nin)), threads=2)
    assert result["ok"], result
    assert result["loss_error"] < 1e-5
    assert math.isfinite(result["grad_error"])


def test_gemm_roof_is_the_fastest_library_measured():
    threads = torch.get_num_threads()
    try:
        rate = measure_gemm("cpu", size=256, repeats=2, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert len(rate.samples_gflops) == 2 and rate.gflops > 0
    assert rate.threads == 1
    assert {rate.library, *rate.others_gflops} == {"torch", "numpy", "onnxruntime"}
    assert all(other <= rate.gflops for other in rate.others_gflops.values())


def test_memory_estimates_follow_the_measured_fits():
    vgg = get_backbone("vgg19")
    layers = list(dict.fromkeys([*vgg.default_content_layers, *vgg.default_style_layers]))
    ort_512 = memory.estimate_bytes("onnxruntime", vgg, layers, 512, 512)
    ort_2048 = memory.estimate_bytes("onnxruntime", vgg, layers, 2048, 2048)
    # measured on the project's machine: ORT VGG19 (Winograd layers) 512 px added 1.61 GB; 2048 px must fit a 24 GB machine
    assert 1.61 * 2**30 < ort_512 < 2.2 * 2**30
    assert ort_2048 < 20 * 2**30
    assert memory.estimate_bytes("eager", vgg, layers, 4096, 4096) > 24 * 2**30
    unknown = memory.memory_model("resnet", "torch")
    assert unknown.per_activation_byte == max(model.per_activation_byte for (_, kind), model in memory.MEMORY_MODELS.items() if kind == "torch")
