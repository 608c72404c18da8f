"""Provider handling that needs no GPU: names, options, profiles, and refusing silent fallback."""

import pytest

from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.engines.onnxruntime_engine import tensorrt_profile
from onnxstyle.errors import ProviderError, UsageError
from onnxstyle.ort_providers import (
    ProviderConfig,
    ShapeProfile,
    canonical,
    create_session,
    preflight,
    probe_provider,
    probe_providers,
    session_options,
    verify_provider,
)
from onnxstyle.weights import resolve


def test_aliases_and_unknown_names():
    assert canonical("cuda") == "CUDAExecutionProvider"
    assert canonical("TRT") == "TensorrtExecutionProvider"
    assert canonical("FooExecutionProvider") == "FooExecutionProvider"
    with pytest.raises(UsageError, match="unknown provider 'gpu'"):
        canonical("gpu")


def test_cuda_options_pin_tf32_and_algo_search():
    options = ProviderConfig("CUDAExecutionProvider", device_id=1).options()
    assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "EXHAUSTIVE" and options["device_id"] == "1"
    assert options["enable_cuda_graph"] == "0"
    options = ProviderConfig("CUDAExecutionProvider", precision="tf32", cuda_graph=True).options()
    assert options["use_tf32"] == "1" and options["enable_cuda_graph"] == "1"


def test_tensorrt_options_follow_precision_and_cuda_graph(tmp_path):
    plain = ProviderConfig("TensorrtExecutionProvider", cache_dir=tmp_path).options()
    assert plain["trt_fp16_enable"] == "False" and plain["trt_cuda_graph_enable"] == "False"
    fast = ProviderConfig("TensorrtExecutionProvider", cache_dir=tmp_path, precision="fp16", cuda_graph=True).options()
    assert fast["trt_fp16_enable"] == "True" and fast["trt_cuda_graph_enable"] == "True"


def test_precisions_per_ort_provider_name_what_they_can_do():
    from onnxstyle.precision import require, supported

    assert supported("onnxruntime", "tensorrt")[0] == ("fp32", "fp16")
    assert supported("onnxruntime", "cuda")[0] == ("fp32", "tf32", "fp16")
    with pytest.raises(UsageError, match=r"cannot run bf16: supported fp32, fp16 \(ONNX Runtime's CPU provider has no bf16 Conv"):
        require("onnxruntime", "cpu", "bf16")
    with pytest.raises(UsageError, match="cannot run tf32: supported fp32, fp16"):
        require("onnxruntime", "cpu", "tf32")


def test_cuda_graph_requests_that_cannot_work_fail_in_one_line():
    nin = get_backbone("nin")
    spec = EngineSpec(nin, ("relu7",), ("relu0",), "max", resolve("synthetic", nin))
    with pytest.raises(UsageError, match="CUDA graphs need the cuda or tensorrt provider, not cpu"):
        create_engine("onnxruntime", spec, provider="cpu", threads=1, cuda_graph=True)
    with pytest.raises(UsageError, match="cannot be combined with tiling"):
        create_engine("onnxruntime", spec, provider="cuda", tile=224, cuda_graph=True)
    with pytest.raises(UsageError, match="torch engine does not take them"):
        create_engine("torch", spec, cuda_graph=True)


@pytest.mark.parametrize("name", ["vgg19", "nin"])
def test_fixed_shape_graphs_fold_every_shape_computation(name, tmp_path):
    """What lets the CUDA EP run without CPU fallback and capture CUDA graphs: no shape arithmetic is left
    once the input sizes are fixed (ORT's basic optimisations, as on any provider), and outputs are unchanged."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.exporters.models import dimension_values, fix_dimensions
    from onnxstyle.exporters.validation import loss_feeds, random_targets, relative_error

    backbone = get_backbone(name)
    spec = EngineSpec(backbone, tuple(backbone.default_content_layers), tuple(backbone.default_style_layers), "max", resolve("synthetic", backbone))
    engine = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2))
    height, width = 97, 130
    for kind in ("loss", "features", "tile_statistics", "tile_gradient"):
        graph = engine._build(kind)
        fixed = fix_dimensions(graph, dimension_values(backbone, spec.content_layers, height, width))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp_path / f"{kind}.onnx")
        ort.InferenceSession(fixed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        left = {node.op_type for node in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node}
        assert not left & {"Shape", "Size", "ReduceProd", "ConstantOfShape"}, (kind, left)
    from onnxstyle.losses import LossWeights
    from onnxstyle.weights import build_backbone

    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(3))
    model = build_backbone(backbone, spec.layers, pooling="max", resolved=spec.weights)
    targets = random_targets(model, spec.weights.preprocessing, spec.content_layers, spec.style_layers, image)
    weights = LossWeights((1.0,) * len(spec.content_layers), (1.0,) * len(spec.style_layers), 1e-3)
    feeds = loss_feeds(image.numpy(), *targets, weights)
    dynamic = ort.InferenceSession(engine._build("loss").SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    fixed_graph = fix_dimensions(engine._build("loss"), dimension_values(backbone, spec.content_layers, height, width))
    static = ort.InferenceSession(fixed_graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(dynamic, static, strict=True):
        assert relative_error(np.asarray(b), np.asarray(a)) < 1e-4  # same arithmetic; kernels may order sums differently


def test_io_binding_path_matches_the_plain_run():
    """The GPU path (fixed bound buffers, reused between steps) run on the CPU EP, where it can be checked."""
    import torch

    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.losses import LossWeights

    nin = get_backbone("nin")
    spec = EngineSpec(nin, ("relu7",), ("relu0", "relu3"), "max", resolve("synthetic", nin))
    plain = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2))
    bound = OnnxRuntimeEngine(spec, ProviderConfig("CPUExecutionProvider", threads=2), io_binding=True)
    content, style = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)), torch.rand(1, 3, 96, 96)
    targets = plain.build_targets(content, [style], [1.0], LossWeights((1.0,), (1.0, 2.0), 1e-3))
    plain.set_targets(targets)
    bound.set_targets(targets)
    previous = None
    for step in range(2):
        image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(10 + step))
        expected_terms, expected_grad = plain.loss_and_grad(image)
        terms, grad = bound.loss_and_grad(image)
        assert terms.total == pytest.approx(expected_terms.total, rel=1e-6)
        assert terms.style == pytest.approx(expected_terms.style, rel=1e-6) and terms.tv == pytest.approx(expected_terms.tv, rel=1e-6)
        assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-9)
        if previous is not None:  # the returned gradient is the caller's: the next run does not overwrite it
            assert not torch.equal(previous, grad)
        previous = grad
    assert bound.describe()["io_binding"] is True


def test_tensorrt_profile_covers_every_dynamic_input(tmp_path):
    vgg = get_backbone("vgg")
    spec = EngineSpec(vgg, ("relu4_2",), ("relu1_1", "relu5_1"), "max", resolve("synthetic", vgg))
    profile = tensorrt_profile(spec, [(256, 256), (64, 64), (128, 96)])
    options = ProviderConfig("TensorrtExecutionProvider", cache_dir=tmp_path, profile=profile).options()
    assert options["trt_profile_min_shapes"] == "image:1x3x64x64,content_target.relu4_2:1x512x8x8"
    assert options["trt_profile_opt_shapes"] == "image:1x3x128x96,content_target.relu4_2:1x512x16x12"
    assert options["trt_profile_max_shapes"] == "image:1x3x256x256,content_target.relu4_2:1x512x32x32"
    assert options["trt_engine_cache_enable"] == "True" and options["trt_engine_cache_path"] == str(tmp_path / "tensorrt")
    assert options["trt_timing_cache_enable"] == "True"


def test_feature_shapes_match_the_torch_model():
    import torch

    from onnxstyle.backbones import Backbone

    for name, layer in (("nin", "relu7"), ("nin", "pool0"), ("vgg19", "relu5_1")):
        spec = get_backbone(name)
        output = Backbone(spec, [layer])(torch.rand(1, 3, 97, 130))[layer]
        assert spec.feature_shape(layer, 97, 130) == tuple(output.shape[1:])


def test_accelerator_sessions_disable_cpu_fallback():
    assert session_options(ProviderConfig("CUDAExecutionProvider")).get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    assert session_options(ProviderConfig("CPUExecutionProvider", threads=2)).intra_op_num_threads == 2


def test_verify_provider_refuses_fallback():
    verify_provider(["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider")
    with pytest.raises(ProviderError, match="refusing a silent fallback"):
        verify_provider(["CPUExecutionProvider"], "CUDAExecutionProvider")


def test_unusable_providers_fail_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = EngineSpec(get_backbone("nin"), ("relu7",), ("relu0",), "max", resolve("synthetic", get_backbone("nin")))
    openvino = probe_provider("OpenVINOExecutionProvider")  # the plugin EP: usable only where it lists an Intel device
    for provider in ("cuda", "tensorrt", *(() if openvino.usable else ("openvino",))):
        with pytest.raises(ProviderError) as caught:
            create_engine("onnxruntime", spec, provider=provider)
        assert "\n" not in str(caught.value) and ("not" in str(caught.value) or "lists no device" in str(caught.value))
    with pytest.raises(ProviderError, match="torch.cuda.is_available"):
        create_engine("torch", spec, provider="cuda")
    assert preflight("CUDAExecutionProvider") is not None
    statuses = {status.name: status for status in probe_providers()}
    assert statuses["CPUExecutionProvider"].usable
    assert all(not status.usable for name, status in statuses.items() if name not in ("CPUExecutionProvider", openvino.name))
    assert "\n" not in openvino.reason


def test_cpu_session_reports_its_provider():
    from onnxstyle.ort_providers import probe_model

    session = create_session(probe_model(), ProviderConfig("CPUExecutionProvider"))
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_shape_profile_format():
    assert ShapeProfile.format({"a": [1, 2], "b": [3]}) == "a:1x2,b:3"


def test_cpu_sessions_plan_no_memory_pattern_and_extractor_is_freed_after_targets():
    import torch

    assert not session_options(ProviderConfig("CPUExecutionProvider")).enable_mem_pattern
    assert session_options(ProviderConfig("CUDAExecutionProvider")).enable_mem_pattern
    nin = get_backbone("nin")
    spec = EngineSpec(nin, ("relu7",), ("relu0",), "max", resolve("synthetic", nin))
    engine = create_engine("onnxruntime", spec, provider="cpu", threads=1)
    assert _kinds(engine) == {"loss"}  # the extractor opens only while targets are built
    from onnxstyle.losses import LossWeights

    image = torch.rand(1, 3, 96, 96)
    targets = engine.build_targets(image, [image], [1.0], LossWeights((1.0,), (1.0,), 0.0))
    engine.set_targets(targets)
    assert _kinds(engine) == {"loss"}
    content, grams = engine.extract(image)  # reopened on demand, same answer
    assert torch.allclose(content["relu7"], targets.content["relu7"])
    terms, grad = engine.loss_and_grad(image)
    assert terms.total == pytest.approx(0.0, abs=1e-6) and grad.shape == image.shape


def _kinds(engine: object) -> set[str]:
    return {kind for kind, _, _ in engine._sessions}  # type: ignore[attr-defined]


def test_which_sessions_get_fixed_shapes():
    """CPU: one dynamic session per graph; CUDA and the rest: one per size; TensorRT: its profile for the loss graph."""
    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.ort_providers import DYNAMIC_SHAPE_PROVIDERS

    def fixed(provider: str, kind: str) -> bool:
        engine = OnnxRuntimeEngine.__new__(OnnxRuntimeEngine)
        engine.config = ProviderConfig(provider)
        engine.static_shapes = provider not in DYNAMIC_SHAPE_PROVIDERS
        return engine._fixed_shapes(kind)

    assert not fixed("CPUExecutionProvider", "loss") and not fixed("CPUExecutionProvider", "tile_gradient")
    assert fixed("CUDAExecutionProvider", "loss") and fixed("CUDAExecutionProvider", "features")
    assert not fixed("TensorrtExecutionProvider", "loss") and fixed("TensorrtExecutionProvider", "tile_statistics")
