"""Engines by name (timm-style registry): ``create_engine("onnxruntime", provider="cuda", ...)``."""

from __future__ import annotations

from onnxstyle.engines.base import Engine, EngineSpec, Targets
from onnxstyle.errors import UsageError

ENGINES = ("torch", "onnxruntime")


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
    if cuda_graph and tile:
        raise UsageError("CUDA graphs replay one fixed-shape run; they cannot be combined with tiling (use --tile 0)")
    if cuda_graph and name.lower() not in ("ort", "onnxruntime"):
        raise UsageError(f"CUDA graphs are an ONNX Runtime option; the {name} engine does not take them")
    engine = _create(name, spec, provider=provider, threads=threads, sizes=sizes, precision=precision, cuda_graph=cuda_graph)
    if tile:
        from onnxstyle.tiling import TiledEngine

        return TiledEngine(engine, tile)  # type: ignore[arg-type]
    return engine


def _create(
    name: str,
    spec: EngineSpec,
    *,
    provider: str,
    threads: int | None,
    sizes: list[tuple[int, int]] | None,
    precision: str,
    cuda_graph: bool = False,
) -> Engine:
    key = name.lower()
    if key in ("ort", "onnxruntime"):
        from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
        from onnxstyle.precision import require
        from onnxstyle.providers import ProviderConfig, canonical, short_name
        from onnxstyle.sysinfo import default_threads

        config = ProviderConfig(canonical(provider), threads=threads or default_threads(), precision=precision, cuda_graph=cuda_graph)
        require("onnxruntime", short_name(config.provider), precision)
        return OnnxRuntimeEngine(spec, config, sizes)
    if key == "torch":
        from onnxstyle.engines.torch_engine import TorchEngine

        return TorchEngine(spec, device=provider, threads=threads, precision=precision)
    raise UsageError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "EngineSpec", "Targets", "create_engine"]
