"""Engines: what computes the exact loss and its gradient, by name (timm-style registry), for a runner to drive.

``create_engine("onnxruntime", spec, provider="cuda", ...)``. A runner (``runners``) is an engine on a provider
or device; a provider (``ort_providers``) is where ONNX Runtime runs it.

An engine computes the exact loss and its gradient with respect to the pixels; the optimiser is always
torch's, outside it. Each factory imports its runtime only when called, so naming an engine costs nothing.
``eager`` is not here: the plain eager loop (``engines.eager``) owns its optimiser and is the bench's
baseline, not an engine the optimisers drive.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxstyle.engines.base import Engine, EngineSpec, Targets
from onnxstyle.engines.tiled import TiledEngine
from onnxstyle.errors import UsageError

EngineFactory = Callable[..., Engine]
_FACTORIES: dict[str, EngineFactory] = {}
ALIASES = {"ort": "onnxruntime"}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Add a factory ``(spec, *, provider, threads, sizes, precision, cuda_graph, whole_image) -> Engine`` under ``name``.

    ``whole_image`` False: the engine will be driven tile by tile, so whole-image resources need not be set up.
    A name already taken is refused: a second registration would silently replace the first engine.
    """
    if name in _FACTORIES or name in ALIASES:
        raise UsageError(f"the engine name '{name}' is taken; registered: {', '.join(list_engines())} (alias: {', '.join(ALIASES)})")

    def add(factory: EngineFactory) -> EngineFactory:
        _FACTORIES[name] = factory
        return factory

    return add


def list_engines() -> list[str]:
    return sorted(_FACTORIES)


def engine_name(text: str) -> str:
    """The registered name for ``text`` (case-insensitive, ``ort`` for onnxruntime), or a UsageError listing them."""
    key = ALIASES.get(text.strip().lower(), text.strip().lower())
    if key not in _FACTORIES:
        raise UsageError(f"unknown engine '{text}'; choose one of: {', '.join(list_engines())}")
    return key


def create_engine(
    name: str,
    spec: EngineSpec,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    sizes: list[tuple[int, int]] | None = None,
    precision: str = "fp32",
    tile: int | None = None,
    cuda_graph: bool = False,
) -> Engine:
    """``provider`` is an ORT provider for onnxruntime and a torch device (cpu, cuda) for torch.

    ``tile`` (a core edge in pixels) runs the engine tile by tile with the exact whole-image gradient.
    ``cuda_graph`` captures each size's loss+gradient run once and replays it (ORT on cuda/tensorrt).
    """
    key = engine_name(name)
    if cuda_graph and tile:
        raise UsageError("CUDA graphs replay one fixed-shape run; they cannot be combined with tiling (use --tile 0)")
    if cuda_graph and key != "onnxruntime":
        raise UsageError(f"CUDA graphs are an ONNX Runtime option; the {name} engine does not take them")
    if tile:
        backend = create_tile_backend(key, spec, provider=provider, threads=threads, sizes=sizes, precision=precision)
        return TiledEngine(backend, tile)  # type: ignore[arg-type]
    return _FACTORIES[key](spec, provider=provider, threads=threads, sizes=sizes, precision=precision, cuda_graph=cuda_graph, whole_image=True)


def create_tile_backend(
    name: str, spec: EngineSpec, *, provider: str = "cpu", threads: int | None = None, sizes: list[tuple[int, int]] | None = None,
    precision: str = "fp32",
) -> Engine:
    """The engine a tiled run drives tile by tile (here, or in a cluster's tile workers): no whole-image session."""
    key = engine_name(name)
    return _FACTORIES[key](spec, provider=provider, threads=threads, sizes=sizes, precision=precision, cuda_graph=False, whole_image=False)


@register_engine("onnxruntime")
def _onnxruntime(
    spec: EngineSpec, *, provider: str, threads: int | None, sizes: list[tuple[int, int]] | None, precision: str, cuda_graph: bool,
    whole_image: bool,
) -> Engine:
    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.precision import require
    from onnxstyle.ort_providers import ProviderConfig, canonical, short_name
    from onnxstyle.sysinfo import default_threads

    config = ProviderConfig(canonical(provider), threads=threads or default_threads(), precision=precision, cuda_graph=cuda_graph)
    require("onnxruntime", short_name(config.provider), precision)
    return OnnxRuntimeEngine(spec, config, sizes, whole_image=whole_image)


@register_engine("torch")
def _torch(
    spec: EngineSpec, *, provider: str, threads: int | None, sizes: list[tuple[int, int]] | None, precision: str, cuda_graph: bool,
    whole_image: bool,
) -> Engine:
    from onnxstyle.engines.torch_engine import TorchEngine

    return TorchEngine(spec, device=provider, threads=threads, precision=precision)


__all__ = ["Engine", "EngineSpec", "Targets", "create_engine", "create_tile_backend", "engine_name", "list_engines", "register_engine"]
