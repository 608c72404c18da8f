"""Export parity: ONNX Runtime against torch, both backbones, both poolings, odd and non-square sizes."""

import json

import numpy as np
import onnx
import pytest
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.errors import ExportValidationError, OutputError, UsageError
from onnxstyle.exporters.export import export_backbone
from onnxstyle.exporters.models import ALLOWED_OPS, build_features_model, build_loss_model, operator_types
from onnxstyle.exporters.validation import VALIDATION_SIZES, relative_error, validate_features, validate_loss
from onnxstyle.losses import LossWeights
from onnxstyle.weights import create_backbone

CASES = [(backbone, pooling) for backbone in ("vgg19", "nin") for pooling in ("max", "avg")]


def _model(backbone, pooling):
    spec = get_backbone(backbone)
    content, style = list(spec.default_content_layers), list(spec.default_style_layers)
    model, resolved = create_backbone(spec, list(dict.fromkeys([*style, *content])), pooling=pooling, weights="synthetic")
    return model, resolved.preprocessing, content, style


@pytest.mark.parametrize("backbone,pooling", CASES)
def test_features_match_torch(backbone, pooling):
    model, preprocessing, _, _ = _model(backbone, pooling)
    graph = build_features_model(model, preprocessing)
    onnx.checker.check_model(graph, full_check=True)
    records = validate_features(graph, model, preprocessing)
    assert {record.size for record in records} == set(VALIDATION_SIZES)
    assert max(record.error for record in records) < 1e-5


@pytest.mark.parametrize("backbone,pooling", CASES)
@pytest.mark.parametrize(
    "term,weights",
    [("all", None), ("content", (5.0, 0.0, 0.0)), ("style", (0.0, 100.0, 0.0)), ("tv", (0.0, 0.0, 1e-3))],
)
def test_gradient_matches_autograd(backbone, pooling, term, weights):
    model, preprocessing, content, style = _model(backbone, pooling)
    graph = build_loss_model(model, preprocessing, content_layers=content, style_layers=style)
    loss_weights = None
    if weights is not None:
        loss_weights = LossWeights((weights[0],) * len(content), (weights[1],) * len(style), weights[2])
    sizes = VALIDATION_SIZES if term == "all" else ((64, 64), (97, 130), (131, 67))
    records = validate_loss(graph, model, preprocessing, content, style, sizes, loss_weights)
    grads = [record.error for record in records if record.output == "grad"]
    assert len(grads) == 3 and max(grads) <= 1e-4


@pytest.mark.parametrize("channels,size", [((128, 128), (16, 16)), ((128, 192), (25, 18)), ((160, 128), (13, 7)), ((128, 128), (3, 5))])
def test_winograd_convolution_matches_the_direct_one(channels, size):
    """F(4×4, 3×3) on whole and partial tiles (sizes that are not multiples of 4 are padded, then cropped)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from onnxstyle.exporters.graph import GraphBuilder, NetworkGraph

    model, preprocessing, _, _ = _model("nin", "max")
    network = NetworkGraph(GraphBuilder(), model, preprocessing)
    in_channels, out_channels = channels
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) / (3 * in_channels**0.5)
    x = torch.randn(1, in_channels, *size, generator=generator)
    output = network._winograd("x", weight.numpy(), "conv")
    network.b.nodes.append(helper.make_node("Identity", [output], ["y"]))
    graph = network.b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], 17, "winograd",
    )
    (result,) = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    expected = torch.nn.functional.conv2d(x, weight, padding=1).numpy()
    assert result.shape == expected.shape
    assert relative_error(result, expected) < 1e-5


@pytest.mark.parametrize("backbone", ["vgg19", "nin"])
def test_winograd_loss_graph_matches_autograd(backbone):
    """Built for 224 px, where the wide 3×3 layers with ≥16 output tiles qualify; exact at other sizes too."""
    model, preprocessing, content, style = _model(backbone, "max")
    graph = build_loss_model(model, preprocessing, content_layers=content, style_layers=style, winograd_size=(224, 224))
    assert "DepthToSpace" in operator_types(graph) and operator_types(graph) <= ALLOWED_OPS
    # VGG19: conv2_2 (112²) … conv5_1 (14²), ≥128 channels; NIN: conv3 (13², 256→384), not conv4-1024 (6²: 4 tiles)
    wide = {"vgg19": 10, "nin": 1}[backbone]
    assert sum("_wino_in_" in node.name for node in graph.graph.node) == 2 * wide  # forward and adjoint
    records = validate_loss(graph, model, preprocessing, content, style, VALIDATION_SIZES)
    assert max(record.error for record in records if record.output == "grad") <= 1e-4
    with pytest.raises(UsageError, match="fp32 graphs only"):
        build_loss_model(model, preprocessing, content_layers=content, style_layers=style, precision="fp16", winograd_size=(224, 224))


@pytest.mark.parametrize("backbone,pooling", CASES)
def test_loss_graph_uses_only_standard_inference_ops(backbone, pooling):
    model, preprocessing, content, style = _model(backbone, pooling)
    graph = build_loss_model(model, preprocessing, content_layers=content, style_layers=style)
    ops = operator_types(graph)
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    assert not ops & {"ConvTranspose", "MaxUnpool", "ScatterND", "ScatterElements", "Gradient"}
    assert all(domain.domain in ("", "ai.onnx") for domain in graph.opset_import)
    assert graph.opset_import[0].version <= 17
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == ["height", "width"]


def test_validation_rejects_a_wrong_graph():
    model, preprocessing, _, _ = _model("vgg19", "max")
    graph = build_features_model(model, preprocessing)
    weight = next(init for init in graph.graph.initializer if init.name.startswith("conv1_1_w"))
    values = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    with pytest.raises(ExportValidationError, match="relative error"):
        validate_features(graph, model, preprocessing, [(64, 64)])


def test_relative_error_is_normwise():
    assert relative_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert relative_error(np.array([1.1, 0.0]), np.array([1.0, 0.0])) == pytest.approx(0.1)


def test_export_writes_models_and_sidecar(tmp_path):
    result = export_backbone(backbone="nin", weights="synthetic", models_dir=tmp_path, validation_sizes=[(64, 64), (97, 130), (256, 192)])
    assert result.features_path.parent == tmp_path and result.features_path.name.endswith(".features.onnx")
    meta = json.loads(result.metadata_path.read_text())
    assert meta["backbone"] == "nin" and meta["opset"] == 17
    assert meta["weights"]["timing_only"] is True
    assert meta["weights"]["preprocessing"]["channel_order"] == "RGB"
    assert meta["loss"]["content_layers"] == ["relu7"]
    assert len({tuple(record["size"]) for record in meta["validation"]["records"]}) == 3
    features = onnx.load(result.features_path)
    assert [output.name for output in features.graph.output] == ["relu0", "relu3", "relu7", "relu10"]
    loss = onnx.load(result.loss_path)
    assert [output.name for output in loss.graph.output] == ["loss", "content_losses", "style_losses", "tv_loss", "grad"]


def test_fp16_export_is_a_valid_reduced_precision_graph(tmp_path):
    result = export_backbone(backbone="nin", weights="synthetic", precision="fp16", models_dir=tmp_path, validation_sizes=[(64, 64)])
    meta = json.loads(result.metadata_path.read_text())
    assert meta["precision"] == "fp16" and result.loss_path.name.endswith("-fp16.loss.onnx")
    assert meta["validation"]["gradient_tolerance"] == 1e-2
    assert all(record["error"] <= 1e-2 for record in meta["validation"]["records"])
    loss = onnx.load(result.loss_path)
    conv_weights = {node.input[1] for node in loss.graph.node if node.op_type == "Conv" and not node.name.startswith("tv_")}  # TV stays fp32
    assert {init.data_type for init in loss.graph.initializer if init.name in conv_weights} == {onnx.TensorProto.FLOAT16}
    # the interface stays fp32: callers feed and read the same tensors as with the fp32 graph
    assert {value.type.tensor_type.elem_type for value in [*loss.graph.input, *loss.graph.output]} == {onnx.TensorProto.FLOAT}
    assert operator_types(loss) <= ALLOWED_OPS


def test_export_bad_input(tmp_path):
    with pytest.raises(UsageError, match="opset 19 is out of range"):
        export_backbone(backbone="vgg", weights="synthetic", opset=19, models_dir=tmp_path)
    with pytest.raises(UsageError, match="not bf16"):
        export_backbone(backbone="nin", weights="synthetic", precision="bf16", models_dir=tmp_path)
    with pytest.raises(UsageError, match="unknown layer"):
        export_backbone(backbone="vgg", weights="synthetic", layers="relu12", models_dir=tmp_path)
    with pytest.raises(OutputError):
        export_backbone(backbone="nin", weights="synthetic", output=tmp_path / "missing" / "x.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_features_graph_accepts_other_batch_free_sizes():
    model, preprocessing, _, _ = _model("nin", "max")
    graph = build_features_model(model, preprocessing)
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for height, width in ((80, 80), (123, 301)):
        outputs = session.run(None, {"image": torch.rand(1, 3, height, width).numpy()})
        assert outputs[0].shape[2:] == ((height - 11) // 4 + 1, (width - 11) // 4 + 1)
