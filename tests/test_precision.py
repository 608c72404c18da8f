"""Precision selection, reduced-precision gradients against fp32, and the refusals."""

import pytest
import torch

from onnxstyle import precision
from onnxstyle.backbones import get_backbone
from onnxstyle.bench import run as bench
from onnxstyle.bench.options import BenchOptions, parse_precisions
from onnxstyle.bench.records import GemmRate
from onnxstyle.bench.run import run_bench
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.errors import UsageError
from onnxstyle.gradient_checks import check_gradient
from onnxstyle.runners import Runner, check_precisions
from onnxstyle.weights import resolve

needs_bf16 = pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no AVX-512-BF16/AMX")


def test_support_matrix_and_one_line_refusals(monkeypatch):
    assert precision.supported("onnxruntime", "cpu")[0] == ("fp32", "fp16")
    assert "tf32" in precision.supported("torch", "cuda")[0]
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    allowed, why = precision.supported("torch", "cpu")
    assert allowed == ("fp32",) and "AVX-512-BF16" in why
    with pytest.raises(UsageError, match="torch on cpu cannot run bf16: supported fp32 .*AVX-512-BF16") as caught:
        precision.require("torch", "cpu", "bf16")
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        precision.require("torch", "cpu", "fp8")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.supported("eager", "cpu")[0] == ("fp32", "bf16")


def test_bench_precision_parsing_and_selection():
    assert parse_precisions("fp32, BF16,fp32") == ["fp32", "bf16"]
    with pytest.raises(UsageError, match="unknown precision 'int8'"):
        parse_precisions("int8")
    with pytest.raises(UsageError, match="no selected runner can run tf32"):
        check_precisions([Runner("onnxruntime", "cpu"), Runner("torch", "cpu")], ["tf32"])
    check_precisions([Runner("onnxruntime", "cpu")], ["fp32"])


def test_unsupported_precision_cells_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(bench, "measure_roofs", lambda *args: {"cpu": GemmRate("cpu", 8, 1, [1.0])})
    options = BenchOptions([Runner("onnxruntime", "cpu")], [get_backbone("nin")], [(64, 64)], ["fp32", "tf32"], weights="synthetic", check=False, iterations=1, runs=1, warmup=0)
    fp32, tf32 = run_bench(options)[0]
    assert fp32.status == "ok" and fp32.precision == "fp32"
    assert tf32.status == "skipped" and tf32.reason == "tf32 not supported (fp32/fp16 only)"


@needs_bf16
@pytest.mark.parametrize("runner", [Runner("torch", "cpu"), Runner("eager", "cpu")])
def test_bf16_gradient_is_checked_against_fp32(runner):
    vgg = get_backbone("vgg19")
    result = check_gradient(runner, EngineSpec.defaults(vgg, resolve("synthetic", vgg)), threads=2, precision="bf16")
    assert result["precision"] == "bf16" and result["reference"] == "torch autograd, cpu, fp32"
    assert result["ok"], result
    assert 1e-4 < result["grad_error"] < precision.GRADIENT_TOLERANCES["bf16"]  # really reduced, still the same gradient


@needs_bf16
def test_bf16_engine_keeps_grams_and_losses_in_fp32():
    nin = get_backbone("nin")
    spec = EngineSpec.defaults(nin, resolve("synthetic", nin))
    engine = create_engine("torch", spec, provider="cpu", threads=2, precision="bf16")
    image = torch.rand(1, 3, 96, 96)
    content, grams = engine.extract(image)
    assert all(value.dtype == torch.float32 for value in [*content.values(), *grams.values()])
    assert engine.describe()["network_dtype"] == "bfloat16" and engine.describe()["losses_and_grams"].startswith("fp32")
    from onnxstyle.losses import LossWeights

    engine.set_targets(engine.build_targets(torch.rand(1, 3, 96, 96), [image], [1.0], LossWeights((1.0,), (1.0,) * 4, 1e-3)))
    terms, grad = engine.loss_and_grad(image)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and terms.total > 0


def test_bf16_grams_use_bf16_units_with_fp32_sums_and_nothing_else_changes():
    from onnxstyle.losses import gram_matrix

    features = torch.randn(1, 64, 24, 24).bfloat16().float()  # what a bf16 network hands the losses
    expected = gram_matrix(features.double()).float()
    matmul = torch.backends.mkldnn.matmul
    before = getattr(matmul, "fp32_precision", None)
    with precision.exact_bf16_matmuls(torch.device("cpu"), torch.bfloat16):
        if before is not None:
            assert matmul.fp32_precision == "bf16"
        inside = gram_matrix(features)
    assert getattr(matmul, "fp32_precision", None) == before  # restored
    assert inside.dtype == torch.float32 and torch.allclose(inside, expected, rtol=1e-5, atol=1e-6)
    with precision.exact_bf16_matmuls(torch.device("cpu"), None):  # fp32 networks: untouched
        assert getattr(matmul, "fp32_precision", None) == before


def test_ort_fp16_graph_gradient_is_checked_against_fp32():
    """The reduced-precision ORT graph (network and adjoint fp16, Grams and losses fp32) on the CPU EP.

    Where the CPU EP lacks an fp16 kernel ORT runs that node in fp32 behind Casts, so the error here
    is a lower bound of what a GPU shows; the check is that the converted graph is the same gradient."""
    nin = get_backbone("nin")
    result = check_gradient(Runner("onnxruntime", "cpu"), EngineSpec.defaults(nin, resolve("synthetic", nin)), threads=2, precision="fp16")
    assert result["ok"], result
    assert 1e-6 < result["grad_error"] < precision.GRADIENT_TOLERANCES["fp16"]


def test_ort_fp16_overflow_is_one_clear_error_not_nan():
    from onnxstyle.errors import NumericalError
    from onnxstyle.losses import LossWeights

    nin = get_backbone("nin")
    engine = create_engine("onnxruntime", EngineSpec.defaults(nin, resolve("synthetic", nin)), provider="cpu", threads=2, precision="fp16")
    assert engine.describe()["graph_precision"] == "fp16"
    image = torch.rand(1, 3, 96, 96)
    engine.set_targets(engine.build_targets(image, [image], [1.0], LossWeights((1.0,), (1.0,) * 4, 1e-3)))
    terms, grad = engine.loss_and_grad(image)
    assert torch.isfinite(grad).all()
    with pytest.raises(NumericalError, match="fp16 loss or gradient overflowed on cpu"):
        engine.loss_and_grad(image * 1e5)  # activations beyond fp16's 65504


def test_winograd_is_chosen_for_fp32_cpu_graphs_only():
    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.ort_providers import ProviderConfig

    vgg = get_backbone("vgg19")
    spec = EngineSpec.defaults(vgg, resolve("synthetic", vgg))
    fp32 = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2), [(256, 256), (128, 128)])
    # chosen for the largest size asked for, where a coarse-to-fine run spends its time: at 256 px conv5_1 is 16x16
    # (16 tiles: Winograd); at 128 px it would be 8x8 (4 tiles: direct)
    assert fp32.winograd_size == (256, 256)
    assert fp32.conv_algorithm.startswith("winograd F(4x4,3x3): conv2_2, conv3_1,") and "conv5_1 (chosen for 256x256)" in fp32.conv_algorithm
    small = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2), [(128, 128)])
    assert "conv4_4 (chosen for 128x128)" in small.conv_algorithm and "conv5_1" not in small.conv_algorithm
    assert OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2), [(256, 256)], winograd=False).conv_algorithm == "direct"
    fp16 = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2, precision="fp16"), [(256, 256)])
    assert fp16.conv_algorithm == "direct"
    with pytest.raises(UsageError, match="fp32 graphs only"):
        OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2, precision="fp16"), [(256, 256)], winograd=True)
