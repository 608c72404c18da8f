"""Exact tiling: tiled loss and gradient equal the untiled ones (1e-4 relative, fp32) for both engines."""

import pytest
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.engines import EngineSpec, create_engine, list_engines, register_engine
from onnxstyle.engines.tiled import TiledEngine, add_tv_gradient
from onnxstyle.errors import UsageError
from onnxstyle.losses import LossWeights
from onnxstyle.tiling import TilePlan, check_tile, choose_tile
from onnxstyle.weights import resolve

CASES = [
    ("vgg19", ("relu2_2",), ("relu1_1", "relu2_1"), 70, 90, 16, "max"),
    ("vgg19", ("relu3_2",), ("relu1_1", "relu2_1", "relu3_1"), 120, 136, 32, "max"),
    # the full default layer set: 25 s of the suite, so `make test-all` runs it, `make test` does not
    pytest.param("vgg19", ("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), 176, 160, 48, "avg", marks=pytest.mark.slow),
    ("nin", ("relu7",), ("relu0", "relu3", "relu7", "relu10"), 260, 300, 64, "max"),
    ("nin", ("relu3",), ("relu0", "relu3"), 120, 140, 32, "avg"),
]


def _spec(model, content, style, pooling):
    backbone = get_backbone(model)
    return EngineSpec(backbone, content, style, pooling, resolve("synthetic", backbone))


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
@pytest.mark.parametrize("model,content,style,height,width,core,pooling", CASES)
def test_tiled_gradient_equals_untiled(engine, model, content, style, height, width, core, pooling):
    spec = _spec(model, content, style, pooling)
    generator = torch.Generator().manual_seed(0)
    content_image, style_image, noise = (torch.rand(1, 3, height, width, generator=generator) for _ in range(3))
    image = 0.7 * content_image + 0.3 * noise
    weights = LossWeights((5.0,) * len(content), (100.0,) * len(style), 1e-3)
    reference = create_engine("torch", spec, threads=2)
    targets = reference.build_targets(content_image, [style_image], [1.0], weights)
    reference.set_targets(targets)
    expected_terms, expected_grad = reference.loss_and_grad(image)

    tiled = create_engine(engine, spec, threads=2, tile=core, sizes=[(height, width)])  # ORT: Winograd layers where they pay
    assert isinstance(tiled, TiledEngine) and tiled.plan(height, width).count > 4
    if engine == "onnxruntime":
        winograd = any(layer.kind == "conv" and min(layer.in_channels, layer.out_channels) >= 128 for layer in spec.backbone.truncated(spec.layers))
        assert tiled.backend.describe()["conv_algorithm"].startswith("winograd") == winograd
    tiled_targets = tiled.build_targets(content_image, [style_image], [1.0], weights)
    for layer, gram in targets.style.items():
        assert torch.allclose(tiled_targets.style[layer], gram, rtol=1e-4, atol=1e-6 * float(gram.abs().max()))
    for layer, features in targets.content.items():
        assert torch.allclose(tiled_targets.content[layer], features, atol=1e-5 * float(features.abs().max()))
    tiled.set_targets(targets)
    terms, grad = tiled.loss_and_grad(image)
    assert terms.total == pytest.approx(expected_terms.total, rel=1e-5)
    assert terms.style == pytest.approx(expected_terms.style, rel=1e-4)
    assert terms.content == pytest.approx(expected_terms.content, rel=1e-4)
    assert float((grad - expected_grad).norm() / expected_grad.norm()) < 1e-4


def test_plan_cores_partition_the_image_and_halos_cover_the_receptive_field():
    vgg = get_backbone("vgg19")
    layers = ["relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    plan = TilePlan.create(vgg, layers, 1000, 700, 300)
    assert plan.core == 304 and plan.stride == 16  # rounded up to the total stride
    assert (plan.halo_before, plan.halo_after) == (80, 70)  # padding offset 70 rounded to the stride; 156 − 70 − 16
    owned = torch.zeros(1000, 700, dtype=torch.int32)
    for tile in plan.tiles():
        owned[tile.rows.core_start : tile.rows.core_stop, tile.cols.core_start : tile.cols.core_stop] += 1
        assert tile.rows.start % 16 == 0 and tile.cols.start % 16 == 0
        assert tile.rows.core_start - tile.rows.start in (0, 80)
    assert bool((owned == 1).all())
    assert plan.count == 4 * 3 and plan.largest_tile == (80 + 304 + 70, 80 + 304 + 70)


def test_bad_tiles_are_explained():
    vgg = get_backbone("vgg19")
    with pytest.raises(UsageError, match=r"receptive field at relu5_1 \(156 px\).*use --tile 160 or more"):
        check_tile(vgg, ["relu4_2", "relu5_1"], 100)
    spec = _spec("vgg19", ("relu4_2",), ("relu1_1", "relu5_1"), "max")
    assert choose_tile(spec, "onnxruntime", 512, 512, 20 * 2**30) is None  # fits untiled
    assert choose_tile(spec, "onnxruntime", 4320, 7680, 10 * 2**30) is not None
    with pytest.raises(UsageError, match="does not fit even tiled"):
        choose_tile(spec, "onnxruntime", 30000, 30000, 4 * 2**30)


@pytest.mark.parametrize("weights_id", ["vgg19", "vgg19-caffe"])
def test_streamed_tv_matches_autograd(weights_id):
    from onnxstyle.losses import tv_loss
    from onnxstyle.weights import CATALOGUE

    preprocessing = CATALOGUE[weights_id].preprocessing
    image = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(2))
    pixels = image.clone().requires_grad_(True)
    expected = tv_loss(preprocessing.to_model(pixels), 1e-3)
    expected.backward()
    grad = torch.ones_like(image)
    value = add_tv_gradient(image, preprocessing, 1e-3, grad)
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)
    scale = max(1.0, float(pixels.grad.abs().max()))
    assert torch.allclose(grad - 1.0, pixels.grad, atol=1e-6 * scale)  # added into what was there


@pytest.mark.parametrize("taken", ["torch", "onnxruntime", "ort"])
def test_the_engine_registry_refuses_a_name_already_taken(taken):
    """A second ``register_engine`` under a taken name (or alias) would silently replace an engine."""
    before = list_engines()
    with pytest.raises(UsageError, match=f"engine name '{taken}' is taken"):
        register_engine(taken)(lambda spec, **options: None)
    assert list_engines() == before
