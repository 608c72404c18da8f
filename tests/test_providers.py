"""Provider handling that needs no GPU: names, options, profiles, and refusing silent fallback."""

import pytest

from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.engines.onnxruntime_engine import tensorrt_profile
from onnxstyle.errors import ProviderError, UsageError
from onnxstyle.providers import ProviderConfig, ShapeProfile, canonical, create_session, preflight, probe_providers, session_options, verify_provider
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
    for provider in ("cuda", "tensorrt", "openvino"):
        with pytest.raises(ProviderError) as caught:
            create_engine("onnxruntime", spec, provider=provider)
        assert "\n" not in str(caught.value) and "not" in str(caught.value)
    with pytest.raises(ProviderError, match="torch.cuda.is_available"):
        create_engine("torch", spec, provider="cuda")
    assert preflight("CUDAExecutionProvider") is not None
    statuses = {status.name: status for status in probe_providers()}
    assert statuses["CPUExecutionProvider"].usable
    assert all(not status.usable for name, status in statuses.items() if name != "CPUExecutionProvider")


def test_cpu_session_reports_its_provider():
    from onnxstyle.providers import _probe_model

    session = create_session(_probe_model(), ProviderConfig("CPUExecutionProvider"))
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
    assert engine._features_session is None  # opened only while targets are built
    from onnxstyle.losses import LossWeights

    image = torch.rand(1, 3, 96, 96)
    targets = engine.build_targets(image, [image], [1.0], LossWeights((1.0,), (1.0,), 0.0))
    engine.set_targets(targets)
    assert engine._features_session is None
    content, grams = engine.extract(image)  # reopened on demand, same answer
    assert torch.allclose(content["relu7"], targets.content["relu7"])
    terms, grad = engine.loss_and_grad(image)
    assert terms.total == pytest.approx(0.0, abs=1e-6) and grad.shape == image.shape
