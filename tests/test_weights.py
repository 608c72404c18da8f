"""Weight loading with checkpoints the tests write themselves (no network)."""

import hashlib
from dataclasses import replace

import pytest
import torch

from onnxstyle import weights as weights_module
from onnxstyle.backbones import Backbone, get_backbone
from onnxstyle.errors import WeightsError, WeightsNotFoundError
from onnxstyle.weights import CAFFE_BGR, CATALOGUE, IMAGENET_RGB, apply_weights, cache_dir, create_backbone, download, resolve


def _checkpoint(path, backbone, layout, scale=1.0):
    """A full-size state dict in torchvision (features.N) or Caffe-name layout, with known values."""
    spec = get_backbone(backbone)
    state = {}
    for layer in spec.layers:
        if layer.kind != "conv":
            continue
        prefix = f"features.{layer.index}" if layout == "features" else layer.name
        state[f"{prefix}.weight"] = torch.full((layer.out_channels, layer.in_channels, layer.kernel, layer.kernel), scale * layer.index / 100)
        state[f"{prefix}.bias"] = torch.full((layer.out_channels,), float(layer.index))
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys are ignored
    torch.save(state, path)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_torchvision_layout_loads(tmp_path):
    path = _checkpoint(tmp_path / "mine.pth", "vgg19", "features")
    model, resolved = create_backbone(get_backbone("vgg"), ["relu2_1"], weights=str(path))
    assert resolved.path == path and resolved.sha256 == _sha(path)
    assert resolved.preprocessing == IMAGENET_RGB  # unknown file: the backbone default's preprocessing
    conv = model.convs()["conv2_1"]
    assert torch.all(conv.weight == 5 / 100) and torch.all(conv.bias == 5.0)


def test_caffe_converted_nin_layout_loads_with_its_catalogue_entry(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path / "nin_imagenet.pth", "nin", "features")
    entry = replace(CATALOGUE["nin-imagenet"], sha256=_sha(path))
    monkeypatch.setitem(weights_module.CATALOGUE, "nin-imagenet", entry)
    model, resolved = create_backbone(get_backbone("nin"), ["relu12"], weights=str(path))
    assert resolved.id == "nin-imagenet" and resolved.preprocessing == CAFFE_BGR
    assert torch.all(model.convs()["conv4-1024"].bias == 22.0)


def test_caffe_name_layout_loads(tmp_path):
    path = _checkpoint(tmp_path / "named.pth", "nin", "names")
    model, _ = create_backbone(get_backbone("nin"), ["relu3"], weights=str(path))
    assert torch.all(model.convs()["conv2"].bias == 7.0)


def test_wrong_shape_is_a_typed_error(tmp_path):
    path = _checkpoint(tmp_path / "vggish.pth", "vgg19", "features")
    with pytest.raises(WeightsError, match=r"shape .* nin conv1 needs \(96, 3, 11, 11\)"):
        create_backbone(get_backbone("nin"), ["relu0"], weights=str(path))


def test_missing_keys_and_garbage_files_are_typed_errors(tmp_path):
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="no tensor for conv1_1.weight"):
        create_backbone(get_backbone("vgg"), ["relu1_1"], weights=str(tmp_path / "empty.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        create_backbone(get_backbone("vgg"), ["relu1_1"], weights=str(tmp_path / "junk.pth"))


def test_catalogue_file_with_wrong_hash_is_rejected(tmp_path):
    path = _checkpoint(tmp_path / "nin_imagenet.pth", "nin", "features")
    with pytest.raises(WeightsError, match="does not match weights 'nin-imagenet'"):
        resolve(str(path), get_backbone("nin"))


def test_download_verifies_then_caches_atomically(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNXSTYLE_OFFLINE")
    source = _checkpoint(tmp_path / "source.pth", "nin", "features")
    entry = replace(CATALOGUE["nin-imagenet"], url=source.as_uri(), sha256=_sha(source))
    monkeypatch.setitem(weights_module.CATALOGUE, "nin-imagenet", entry)
    resolved = resolve("nin-imagenet", get_backbone("nin"))
    assert resolved.path == cache_dir() / "nin_imagenet.pth" and resolved.sha256 == _sha(source)
    assert not list(cache_dir().glob("*.part"))
    # cached files are re-verified on every use
    resolved.path.write_bytes(b"corrupted")
    with pytest.raises(WeightsError, match="does not match"):
        resolve("nin-imagenet", get_backbone("nin"))


def test_download_with_wrong_hash_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNXSTYLE_OFFLINE")
    source = _checkpoint(tmp_path / "source.pth", "nin", "features")
    entry = replace(CATALOGUE["nin-imagenet"], url=source.as_uri())
    with pytest.raises(WeightsError, match="nothing was saved"):
        download(entry)
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


def test_offline_missing_weights_explain_everything():
    with pytest.raises(WeightsNotFoundError) as caught:
        resolve("vgg19-caffe", get_backbone("vgg"))
    text = str(caught.value)
    for expected in ("vgg19-d01eb7cb.pth", "web.eecs.umich.edu", "dd893d447ece014a", str(cache_dir()), "models/weights", "--weights synthetic"):
        assert expected in text
    assert caught.value.exit_code == 6


def test_auto_falls_back_to_synthetic_and_synthetic_is_deterministic():
    resolved = resolve("auto", get_backbone("vgg"))
    assert resolved.weight_set.synthetic and "timing only" in resolved.label
    first = apply_weights(Backbone(get_backbone("vgg"), ["relu1_1"]), resolved).convs()["conv1_1"].weight
    second = apply_weights(Backbone(get_backbone("vgg"), ["relu1_1"]), resolved).convs()["conv1_1"].weight
    assert torch.equal(first, second)


def test_weights_for_the_other_backbone_are_refused():
    with pytest.raises(WeightsError, match="are for nin"):
        resolve("nin-imagenet", get_backbone("vgg"))


def test_preprocessing_maps_pixels_as_documented():
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    caffe = CAFFE_BGR.to_model(rgb).flatten().tolist()
    assert caffe == pytest.approx([255 - 103.939, 127.5 - 116.779, 0 - 123.68])
    imagenet = IMAGENET_RGB.to_model(rgb).flatten().tolist()
    assert imagenet == pytest.approx([(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225])
