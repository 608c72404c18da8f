"""The benchmark's method: runner parsing, statistics, FLOP and memory models, windows, skips, Ctrl-C."""

import math

import pytest
import torch

from onnxstyle import bench
from onnxstyle.backbones import get_backbone
from onnxstyle.bench import (
    BenchOptions,
    Cell,
    Runner,
    check_gradient,
    engine_spec,
    forward_flops,
    iteration_flops,
    measure_cell,
    parse_models,
    parse_precisions,
    parse_runner,
    parse_sizes,
    run_bench,
    select_runners,
    summarize,
    window_plan,
)
from onnxstyle.errors import ProviderError, UsageError
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


class FakeLoop:
    """Each step 'costs' a fixed engine time plus a fixed loop overhead, on a fake clock."""

    def __init__(self, clock, engine_time=0.009, overhead=0.001):
        self.clock, self.engine_time, self.overhead = clock, engine_time, overhead
        self.engine_seconds = 0.0
        self.torch_threads = 1
        self.steps = 0

    def step(self):
        self.clock.now += self.engine_time + self.overhead
        self.engine_seconds += self.engine_time
        self.steps += 1
        return 1.0 / self.steps

    def describe(self):
        return {"engine": "fake"}


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_measure_cell_times_setup_first_iteration_warmup_and_windows(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    loops = []

    def factory():
        clock.now += 2.5
        loops.append(FakeLoop(clock))
        return loops[-1]

    cell = Cell("fake-cpu", "vgg19", 64, 64)
    measure_cell(cell, factory, BenchOptions([], [], [], iterations=4, runs=3, warmup=2), "cpu")
    assert cell.status == "ok"
    assert cell.setup_seconds == pytest.approx(2.5)
    assert cell.first_iteration_seconds == pytest.approx(0.01)
    assert loops[0].steps == 1 + 2 + 3 * 4
    assert len(cell.windows) == 3 and len(cell.iteration_seconds) == 12
    assert cell.stats["median"] == pytest.approx(6000.0)
    assert cell.overhead == pytest.approx(0.1)
    assert cell.final_loss == pytest.approx(1 / 15)


def test_interleaved_cells_rotate_their_windows_round_by_round(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    order = []

    class Recording(FakeLoop):
        def __init__(self, name, **kwargs):
            super().__init__(clock, **kwargs)
            self.name = name
            self.torch_threads = 1 if name == "b" else 2  # as an ORT CPU engine set up later would leave it

        def step(self):
            order.append(self.name)
            if self.steps:  # warm-up and windows run with the thread count this loop was set up with
                assert torch.get_num_threads() == self.torch_threads
            return super().step()

    monkeypatch.setattr(bench, "free_bytes", lambda runner: 2**40)
    group = [
        bench.PendingCell(Cell(name, "vgg19", 64, 64, estimate_bytes=2**20), Runner("torch", "cpu"), lambda name=name, cost=cost: Recording(name, engine_time=cost))
        for name, cost in (("a", 0.009), ("b", 0.019), ("c", 0.004))
    ]
    options = BenchOptions([], [], [], iterations=2, runs=3, warmup=1)
    assert bench.interleavable(group, options)
    roofs = {"cpu": bench.GemmRate("cpu", 8, 1, [1.0])}
    for pending in group:
        pending.cell.gflop_per_iteration = 1.0
    threads = torch.get_num_threads()
    try:
        bench.run_interleaved(group, options, roofs, None)
    finally:
        torch.set_num_threads(threads)
    # set-up and warm-up one after another, then windows of two iterations in rounds abc, bca, cab
    assert "".join(order) == "aabbcc" + "aabbcc" + "bbccaa" + "ccaabb"
    for pending in group:
        cell = pending.cell
        assert cell.status == "ok" and cell.interleaved
        assert [window["round"] for window in cell.windows] == [0, 1, 2]
        assert cell.peak_rss_bytes >= cell.rss_before_bytes
    assert group[1].cell.median == pytest.approx(60 / 0.020)
    # Cells that would not fit together, tiled cells, lone cells and --sequential run one after another.
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 5 * 2**20)
    assert not bench.interleavable(group, options)
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 2**40)
    assert not bench.interleavable(group[:1], options)
    options.interleave = False
    assert not bench.interleavable(group, options)


def test_a_failing_interleaved_cell_leaves_the_others_measured(monkeypatch):
    class Failing(FakeLoop):
        def step(self):
            if self.steps == 2:
                raise bench.OnnxstyleError("fp16 gradient overflowed (loss scale 1024); use bf16 or fp32")
            return super().step()

    clock = Clock()
    group = [
        bench.PendingCell(Cell("good", "nin", 64, 64, gflop_per_iteration=1.0), Runner("torch", "cpu"), lambda: FakeLoop(clock)),
        bench.PendingCell(Cell("bad", "nin", 64, 64, gflop_per_iteration=1.0), Runner("torch", "cpu"), lambda: Failing(clock)),
    ]
    bench.run_interleaved(group, BenchOptions([], [], [], iterations=2, runs=2, warmup=0), {"cpu": bench.GemmRate("cpu", 8, 1, [1.0])}, None)
    good, bad = (pending.cell for pending in group)
    assert good.status == "ok" and len(good.windows) == 2
    assert bad.status == "failed" and bad.reason.startswith("fp16 gradient overflowed")


def test_cells_that_would_not_fit_are_skipped_with_the_estimate(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "free_bytes", lambda runner: 1200 * 2**20)
    monkeypatch.setattr(bench, "measure_gemm", lambda device: bench.GemmRate(device, 8, 1, [1.0]))
    options = BenchOptions([Runner("onnxruntime", "cpu")], [get_backbone("vgg19")], [(64, 64), (2048, 2048)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0, tile=0)
    cells, roofs, interrupted = run_bench(options)
    assert not interrupted and "cpu" in roofs
    small, large = cells
    assert small.status == "ok" and small.median > 0
    assert large.status == "skipped"
    assert large.reason.startswith("needs ≈") and large.reason.endswith("GB, 1.2 GB free")
    assert large.stats is None
    options.tile, options.sizes = None, [(2048, 2048)]  # automatic tiling cannot help with 1.2 GB either
    (large,), _, _ = run_bench(options)
    assert large.status == "skipped" and "does not fit even tiled" in large.reason and large.reason.endswith("1.2 GB free")


def test_cells_can_run_tiled_and_the_plain_loop_never_is(monkeypatch):
    monkeypatch.setattr(bench, "measure_gemm", lambda device: bench.GemmRate(device, 8, 1, [1.0]))
    options = BenchOptions([Runner("onnxruntime", "cpu"), Runner("eager", "cpu")], [get_backbone("nin")], [(512, 480)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0, tile=224)
    ort_cell, eager_cell = run_bench(options)[0]
    assert ort_cell.status == "ok" and ort_cell.tile == 224 and ort_cell.engine["tiling"]["core"] == 224 and ort_cell.engine["tiling"]["exact"]
    assert eager_cell.status == "ok" and eager_cell.tile is None
    vgg = bench.engine_spec(get_backbone("vgg19"), resolve("synthetic", get_backbone("vgg19")))
    assert bench.cell_tile(Runner("torch", "cpu"), vgg, 4096, 4096, None, 20 * 2**30)  # automatic
    assert bench.cell_tile(Runner("torch", "cpu"), vgg, 4096, 4096, 0, 20 * 2**30) is None  # --tile 0: never
    assert bench.cell_tile(Runner("torch", "cpu"), vgg, 512, 512, None, 20 * 2**30) is None  # fits: untiled


def test_ctrl_c_keeps_finished_cells(monkeypatch):
    monkeypatch.setattr(bench, "measure_gemm", lambda device: bench.GemmRate(device, 8, 1, [1.0]))
    real = bench.measure_cell
    calls = []

    def interrupting(cell, *args, **kwargs):
        calls.append(cell)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(bench, "measure_cell", interrupting)
    options = BenchOptions([Runner("onnxruntime", "cpu")], [get_backbone("nin")], [(64, 64), (96, 96), (128, 128)], weights="synthetic", check=False, iterations=1, runs=1, warmup=0)
    cells, _, interrupted = run_bench(options)
    assert interrupted
    assert [cell.status for cell in cells] == ["ok", "interrupted"]
    assert cells[0].median > 0


def test_too_small_sizes_are_skipped_not_crashed(monkeypatch):
    monkeypatch.setattr(bench, "measure_gemm", lambda device: bench.GemmRate(device, 8, 1, [1.0]))
    options = BenchOptions([Runner("torch", "cpu")], [get_backbone("vgg19")], [(8, 8)], weights="synthetic", check=False, iterations=1, runs=1)
    (cell,), _, _ = run_bench(options)
    assert cell.status == "skipped" and "minimum" in cell.reason


@pytest.mark.parametrize("runner", [Runner("onnxruntime", "cpu"), Runner("eager", "cpu")])
def test_gradient_check_against_torch_autograd(runner):
    nin = get_backbone("nin")
    result = check_gradient(runner, engine_spec(nin, resolve("synthetic", nin)), threads=2)
    assert result["ok"], result
    assert result["loss_error"] < 1e-5
    assert math.isfinite(result["grad_error"])


def test_gemm_roof_is_the_fastest_library_measured():
    rate = bench.measure_gemm("cpu", size=256, repeats=2)
    assert len(rate.samples_gflops) == 2 and rate.gflops > 0
    assert rate.threads == torch.get_num_threads()
    assert {rate.library, *rate.others_gflops} == {"torch", "numpy", "onnxruntime"}
    assert all(other <= rate.gflops for other in rate.others_gflops.values())


def test_memory_estimates_follow_the_measured_fits():
    vgg = get_backbone("vgg19")
    layers = list(dict.fromkeys([*vgg.default_content_layers, *vgg.default_style_layers]))
    ort_512 = bench.estimate_bytes(Runner("onnxruntime", "cpu"), vgg, layers, 512, 512)
    ort_2048 = bench.estimate_bytes(Runner("onnxruntime", "cpu"), vgg, layers, 2048, 2048)
    # measured on the project's machine: ORT VGG19 (Winograd layers) 512 px added 1.61 GB; 2048 px must fit a 24 GB machine
    assert 1.61 * 2**30 < ort_512 < 2.2 * 2**30
    assert ort_2048 < 20 * 2**30
    assert bench.estimate_bytes(Runner("eager", "cpu"), vgg, layers, 4096, 4096) > 24 * 2**30
    unknown = bench.memory_model("resnet", "torch")
    assert unknown.per_activation_byte == max(model.per_activation_byte for (_, kind), model in bench.MEMORY_MODELS.items() if kind == "torch")
