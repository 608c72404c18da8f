"""Plugin execution providers: EPs shipped as wheels of their own and loaded into any ONNX Runtime ≥ 1.23.

OpenVINO, TensorRT-RTX, WebGPU and MLX no longer come compiled into an ORT build: a package ships the EP's
library, ``onnxruntime.register_execution_provider_library`` loads it, ``onnxruntime.get_ep_devices()`` lists
the devices it claims, and a session picks one with ``SessionOptions.add_provider_for_devices``. A package can
install and register fine and still list no device (OpenVINO lists only Intel hardware), so "usable" means
installed, registered and listing the device asked for; everything else is one line saying which of those failed.

Registration is per process and ORT refuses a second one, so it happens once here, lazily, in whichever process
opens a session (bench and converge workers register on their own). Libraries outside this table come from
``onnxstyle --ep-library PATH[:NAME]``, which the CLI puts in ``ONNXSTYLE_EP_LIBRARIES`` so workers inherit it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onnxstyle.errors import ProviderError, UsageError, first_line

EP_LIBRARIES_VARIABLE = "ONNXSTYLE_EP_LIBRARIES"
# Entries of ONNXSTYLE_EP_LIBRARIES: ';' because ':' separates a library's path from its EP name.
EP_LIBRARIES_SEPARATOR = ";"


@dataclass(frozen=True)
class PluginEp:
    """One plugin-EP package we know: where it comes from, what it is called, how its devices differ."""

    key: str  # the --provider name
    title: str
    distributions: tuple[str, ...]  # PyPI names that install ``module``; the first is the one to pip install
    module: str
    ep_name: str
    why_no_device: str  # completes "lists no device here: …"; {cpu} is this machine's CPU vendor
    device_key: str | None = None  # ep_metadata key that names the device kind (OpenVINO: ov_device)
    devices: tuple[str, ...] = ()  # device kinds, the default first
    options: tuple[str, ...] = ()  # provider options this EP accepts (what ProviderConfig may set)
    precision_hints: Mapping[str, str] = field(default_factory=dict)  # precision → the EP's own name for it

    def target(self, device: str | None) -> str:
        """The runner target: ``openvino`` for the default device, ``openvino-gpu`` for another."""
        return self.key if device is None or device == self.default_device else f"{self.key}-{device.lower()}"

    @property
    def default_device(self) -> str | None:
        return self.devices[0] if self.devices else None


KNOWN: dict[str, PluginEp] = {
    ep.key: ep
    for ep in (
        PluginEp(
            "openvino", "OpenVINO", ("onnxruntime-ep-openvino",), "onnxruntime_ep_openvino", "OpenVINOExecutionProvider",
            "its plugin lists only Intel CPUs, GPUs and NPUs, and this CPU's vendor is {cpu}",
            device_key="ov_device", devices=("CPU", "GPU", "NPU"), options=("load_config",),
            precision_hints={"fp32": "f32", "bf16": "bf16", "fp16": "f16"},
        ),
        PluginEp(
            "tensorrt-rtx", "TensorRT-RTX",
            ("onnxruntime-ep-nv-tensorrt-rtx", "onnxruntime-ep-nv-tensorrt-rtx-cu13", "onnxruntime-ep-nv-tensorrt-rtx-cu12"),
            "onnxruntime_ep_nv_tensorrt_rtx", "NvTensorRTRTXExecutionProvider",
            "it lists only NVIDIA RTX GPUs of its support matrix (compute capability 7.5, 8.6, 8.9, 12.x) with a driver for its CUDA",
        ),
        PluginEp(
            "webgpu", "WebGPU", ("onnxruntime-ep-webgpu",), "onnxruntime_ep_webgpu", "WebGpuExecutionProvider",
            "it needs a GPU with a Vulkan (Linux), Metal or D3D12 driver; on Linux the loader libvulkan.so.1",
        ),
        PluginEp(
            "mlx", "MLX", ("onnxruntime-ep-mlx",), "onnxruntime_ep_mlx", "MLXExecutionProvider",
            "it lists only Apple Silicon GPUs (macOS on arm64)",
        ),
    )
}


class EpDevice(Protocol):
    """What we read of ``onnxruntime.OrtEpDevice`` (tests pass look-alikes)."""

    @property
    def ep_name(self) -> str: ...

    @property
    def ep_metadata(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class PluginTarget:
    """A plugin EP and the device kind asked for (None: its default, or the one device an EP without kinds lists)."""

    ep: PluginEp
    device: str | None

    @property
    def name(self) -> str:
        return self.ep.target(self.device)

    @property
    def provider(self) -> str:
        """The provider string of ProviderConfig: the EP name, with ``:DEVICE`` for a device other than the default."""
        if self.device is None or self.device == self.ep.default_device:
            return self.ep.ep_name
        return f"{self.ep.ep_name}:{self.device}"


def parse_target(text: str) -> PluginTarget | None:
    """``openvino``, ``openvino:gpu``, ``openvino-npu``, ``OpenVINOExecutionProvider:GPU`` → a target; None if no plugin's name."""
    name = text.strip()
    for ep in KNOWN.values():
        for prefix in (ep.key, ep.ep_name.lower()):
            lowered = name.lower()
            if lowered != prefix and not lowered.startswith((prefix + ":", prefix + "-")):
                continue
            device = name[len(prefix) + 1 :].strip().upper() or None
            if device is not None and device not in ep.devices:
                kinds = ", ".join(ep.target(kind) for kind in ep.devices) if ep.devices else ep.key
                raise UsageError(f"unknown {ep.title} device '{name[len(prefix) + 1:]}' in '{text}'; use {kinds}")
            return PluginTarget(ep, device or ep.default_device)
    return None


def target_of(provider: str) -> PluginTarget | None:
    """The plugin target of a ProviderConfig provider string (``OpenVINOExecutionProvider:GPU``), if it is one."""
    ep_name, _, device = provider.partition(":")
    for ep in KNOWN.values():
        if ep.ep_name == ep_name:
            return PluginTarget(ep, device or ep.default_device)
    return None


def ep_name_of(provider: str) -> str:
    """The EP name ORT reports for a provider string (the device suffix dropped)."""
    return provider.partition(":")[0]


def load_config(target: PluginTarget, precision: str, threads: int | None) -> dict[str, dict[str, str]]:
    """OpenVINO's per-device properties: the precision told, never left to the device.

    OpenVINO's CPU plugin runs bf16 by default on AMX/AVX512-BF16 CPUs, so an fp32 run must say f32. Latency
    mode with one stream and pinned threads is how every other runner is measured (one request at a time).
    """
    device = target.device or "CPU"
    properties = {"INFERENCE_PRECISION_HINT": target.ep.precision_hints[precision], "PERFORMANCE_HINT": "LATENCY"}
    if device in ("CPU", "GPU"):
        properties["NUM_STREAMS"] = "1"
    if device == "CPU" and threads:
        properties["INFERENCE_NUM_THREADS"] = str(threads)
    return {device: properties}


def provider_options(target: PluginTarget, precision: str, threads: int | None) -> dict[str, str]:
    """The options of ``add_provider_for_devices`` for ``target`` (only the ones its EP accepts)."""
    if "load_config" in target.ep.options:
        return {"load_config": json.dumps(load_config(target, precision, threads), sort_keys=True)}
    return {}


def installed_version(ep: PluginEp) -> str | None:
    """The version of whichever of ``ep``'s distributions is installed, or None when its module is absent."""
    import importlib.util
    from importlib import metadata

    if importlib.util.find_spec(ep.module) is None:
        return None
    for distribution in ep.distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown version"


def label(ep: PluginEp, version: str) -> str:
    return f"{ep.title} ({ep.distributions[0]} {version})"


# Registration name → library path, for this process (ORT refuses a name twice).
_registered: dict[str, str] = {}


def register_library(name: str, path: str) -> None:
    """Register ``path`` under ``name`` once per process; a failure is a ProviderError in one line."""
    import onnxruntime as ort

    if name in _registered:
        return
    if not hasattr(ort, "register_execution_provider_library"):
        raise ProviderError(f"{name}: plugin execution providers need onnxruntime ≥ 1.23, this is {ort.__version__}")
    try:
        ort.register_execution_provider_library(name, path)
    except Exception as error:  # ORT raises its own Fail/InvalidArgument types
        if "already registered" not in str(error):
            raise ProviderError(f"{name}: cannot register {path}: {first_line(error)}") from error
    _registered[name] = path


def register(ep: PluginEp) -> str:
    """Register an installed plugin's library once per process; its version (ProviderError when not installed)."""
    import importlib

    version = installed_version(ep)
    if version is None:
        raise ProviderError(f"{ep.title} is not installed: pip install {ep.distributions[0]}")
    try:
        module = importlib.import_module(ep.module)
        path = str(module.get_library_path())
    except Exception as error:  # a broken wheel: FileNotFoundError, ImportError of its own dependencies
        raise ProviderError(f"{label(ep, version)} is installed but broken: {first_line(error)}") from error
    register_library(ep.ep_name, path)
    return version


def ep_devices(ep_name: str) -> list[Any]:
    import onnxruntime as ort

    return [device for device in ort.get_ep_devices() if device.ep_name == ep_name]


def device_kind(device: EpDevice, ep: PluginEp) -> str | None:
    """The device kind ``device`` says it is (``GPU`` for ``ov_device=GPU.0``), None when its EP has no kinds."""
    if ep.device_key is None:
        return None
    return str(device.ep_metadata.get(ep.device_key, "")).upper().partition(".")[0] or None


def select_device(devices: Sequence[EpDevice], target: PluginTarget) -> EpDevice | None:
    """The first of ``devices`` that is ``target``'s EP and device kind (any device of an EP without kinds)."""
    for device in devices:
        if device.ep_name != target.ep.ep_name:
            continue
        if target.device is None or target.ep.device_key is None or device_kind(device, target.ep) == target.device:
            return device
    return None


def listed_kinds(devices: Sequence[EpDevice], ep: PluginEp) -> list[str]:
    return sorted({kind for device in devices if device.ep_name == ep.ep_name and (kind := device_kind(device, ep))})


def no_device_reason(target: PluginTarget, version: str, devices: Sequence[EpDevice]) -> str:
    """Why ``target`` has no device: the plugin lists none at all, or none of the kind asked for."""
    kinds = listed_kinds(devices, target.ep)
    if kinds:
        return f"{label(target.ep, version)} lists no {target.device} device here (it lists {', '.join(kinds)})"
    return f"{label(target.ep, version)} lists no device here: {target.ep.why_no_device.format(cpu=cpu_vendor())}"


def cpu_vendor() -> str:
    """The CPU's vendor as ONNX Runtime's device discovery reports it to plugins (what OpenVINO filters on)."""
    import onnxruntime as ort

    for device in ort.get_ep_devices():
        if device.ep_name == "CPUExecutionProvider" and device.device.vendor:
            return str(device.device.vendor)
    return "unknown"


def device_for(target: PluginTarget) -> Any:
    """Register ``target``'s plugin and return the OrtEpDevice a session should run on, or a ProviderError saying why not."""
    version = register(target.ep)
    devices = ep_devices(target.ep.ep_name)
    chosen = select_device(devices, target)
    if chosen is None:
        raise ProviderError(no_device_reason(target, version, devices))
    return chosen


def package_label(provider: str) -> str | None:
    """``onnxruntime-ep-openvino 1.8.1`` for a plugin provider string (what a report should name), else None."""
    target = target_of(provider)
    if target is None:
        extra = extra_eps().get(ep_name_of(provider))
        return f"library {extra}" if extra else None
    version = installed_version(target.ep)
    return f"{target.ep.distributions[0]} {version}" if version else None


def known_targets() -> list[PluginTarget]:
    """Every plugin target worth listing: each known plugin's default device, and every other device it lists here."""
    targets = []
    for ep in KNOWN.values():
        targets.append(PluginTarget(ep, ep.default_device))
        if installed_version(ep) is None or not ep.devices:
            continue
        try:
            register(ep)
        except ProviderError:
            continue
        kinds = listed_kinds(ep_devices(ep.ep_name), ep)
        targets += [PluginTarget(ep, kind) for kind in ep.devices[1:] if kind in kinds]
    return targets


def parse_library(text: str) -> tuple[Path, str | None]:
    """``PATH[:NAME]`` → (library path, EP name or None). A ':' followed by a path separator or a drive is the path's own."""
    path, colon, name = text.strip().rpartition(":")
    if not colon or not name or "/" in name or "\\" in name or len(path) < 2 and path.isalpha():
        path, name = text.strip(), ""
    if not path:
        raise UsageError(f"--ep-library needs PATH[:NAME], got '{text}'")
    return Path(path), name or None


def library_entries() -> list[str]:
    return [item for item in os.environ.get(EP_LIBRARIES_VARIABLE, "").split(EP_LIBRARIES_SEPARATOR) if item.strip()]


def add_libraries(items: Sequence[str]) -> None:
    """Record ``--ep-library`` values for this process and every worker it starts (checked here, registered on use)."""
    for item in items:
        path, _ = parse_library(item)
        if not path.is_file():
            raise UsageError(f"--ep-library: no such file {path}")
    entries = [*library_entries(), *(item.strip() for item in items)]
    os.environ[EP_LIBRARIES_VARIABLE] = EP_LIBRARIES_SEPARATOR.join(dict.fromkeys(entries))


# EP name → library path of the --ep-library plugins registered in this process.
_extra: dict[str, str] = {}


def extra_eps() -> dict[str, str]:
    """Register every ``--ep-library`` plugin (once); EP name → its library. Without NAME, the EPs it added are taken."""
    import onnxruntime as ort

    for item in library_entries():
        path, name = parse_library(item)
        registration = name or path.stem
        if registration in _registered:
            continue
        before = {device.ep_name for device in ort.get_ep_devices()} if name is None else set()
        register_library(registration, str(path))
        names = [name] if name else sorted({device.ep_name for device in ort.get_ep_devices()} - before)
        if not names:
            raise ProviderError(f"--ep-library {path}: registered, but it lists no device here; give its EP name as PATH:NAME")
        _extra.update(dict.fromkeys(names, str(path)))
    return dict(_extra)


def extra_device(ep_name: str) -> Any:
    """The first device an ``--ep-library`` plugin lists, or a ProviderError saying it lists none."""
    library = extra_eps()[ep_name]
    devices = ep_devices(ep_name)
    if not devices:
        raise ProviderError(f"{ep_name} (--ep-library {library}) lists no device here")
    return devices[0]
