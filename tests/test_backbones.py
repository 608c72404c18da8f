import pytest
import torch

from onnxstyle.backbones import Backbone, get_backbone
from onnxstyle.errors import UsageError


def test_vgg19_names_follow_torchvision_indices():
    vgg = get_backbone("vgg")
    by_index = {layer.index: layer.name for layer in vgg.layers}
    assert by_index[0] == "conv1_1" and by_index[4] == "pool1" and by_index[21] == "conv4_2"
    assert by_index[22] == "relu4_2" and by_index[29] == "relu5_1"
    assert len(vgg.truncated(["relu5_1"])) == 30  # nothing past index 29 is built


def test_nin_has_caffe_layout_without_relu4():
    nin = get_backbone("nin")
    names = nin.layer_names
    assert "relu4" not in names
    assert names[:7] == ["conv1", "relu0", "cccp1", "relu1", "cccp2", "relu2", "pool0"]
    assert [layer.name for layer in nin.layers if layer.kind == "pool"] == ["pool0", "pool2", "pool3"]
    assert all(layer.ceil_mode for layer in nin.layers if layer.kind == "pool")
    conv1 = nin.layers[0]
    assert (conv1.kernel, conv1.stride, conv1.padding, conv1.out_channels) == (11, 4, 0, 96)
    assert next(layer for layer in nin.layers if layer.name == "conv4-1024").index == 22


def test_unknown_layer_lists_valid_names_for_that_backbone():
    with pytest.raises(UsageError, match="valid layers: conv1, relu0"):
        get_backbone("nin").validate_layers(["relu4_2"])
    with pytest.raises(UsageError, match="unknown backbone 'resnet'"):
        get_backbone("resnet")


def test_receptive_field_and_min_size():
    vgg = get_backbone("vgg19")
    assert vgg.receptive_field(["relu5_1"]) == 156
    assert vgg.min_size(["relu5_1"]) == 16


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_backbone_outputs_requested_maps(pooling):
    model = Backbone(get_backbone("nin"), ["relu0", "relu7"], pooling)
    features = model(torch.rand(1, 3, 97, 130))
    assert set(features) == {"relu0", "relu7"}
    assert features["relu0"].shape == (1, 96, 22, 30)
    assert features["relu7"].shape[1] == 384
    kind = torch.nn.MaxPool2d if pooling == "max" else torch.nn.AvgPool2d
    assert isinstance(model.body["pool0"], kind)


@pytest.mark.parametrize("backbone,layer", [("nin", "relu10"), ("nin", "relu12"), ("vgg19", "relu5_1"), ("vgg19", "pool5")])
def test_min_size_is_exactly_the_smallest_working_input(backbone, layer):
    spec = get_backbone(backbone)
    smallest = spec.min_size([layer])
    model = Backbone(spec, [layer])
    output = model(torch.rand(1, 3, smallest, smallest + 5))[layer]
    assert spec.feature_shape(layer, smallest, smallest + 5) == tuple(output.shape[1:])
    assert spec.feature_shape(layer, smallest - 1, smallest - 1) is None
