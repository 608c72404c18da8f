"""The Gatys optimisation loop with the classic tools' vocabulary and defaults (neural-style flags).

The optimisers are torch's own (Adam, L-BFGS) driving a leaf tensor whose ``.grad`` the engine fills,
so torch autograd and ONNX Runtime run through exactly the same loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from onnxstyle.backbones import Pooling, get_backbone, parse_layers
from onnxstyle.engines import EngineSpec, create_engine
from onnxstyle.errors import NumericalError, OnnxstyleError, UsageError
from onnxstyle.images import DEMO_CONTENT, DEMO_STYLE, check_writable, load_image, parse_size, resize, save_image, to_image, to_tensor
from onnxstyle.losses import LossTerms, LossWeights
from onnxstyle.weights import resolve

Optimizer = Literal["lbfgs", "adam"]


class Interrupted(OnnxstyleError):
    """Ctrl-C: the current image was saved."""

    exit_code = 130


@dataclass
class StylizeResult:
    output: Path
    iterations: int
    losses: list[float]
    seconds: float
    engine: dict[str, object]
    weights: str
    timing_only: bool
    final: LossTerms | None = None
    saved: list[Path] = field(default_factory=list)

    @property
    def loss_reduction(self) -> float:
        return 1.0 - self.losses[-1] / self.losses[0] if self.losses and self.losses[0] else 0.0


ProgressCallback = Callable[[int, int, LossTerms], None]


def _blend(count: int, text: str | Sequence[float] | None) -> list[float]:
    if text is None:
        return [1.0] * count
    values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(values) != count:
        raise UsageError(f"--style-blend-weights has {len(values)} value(s) but {count} style image(s) were given")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise UsageError("--style-blend-weights must be non-negative and not all zero")
    return values


def _luminance_transfer(stylised: Image.Image, content: Image.Image) -> Image.Image:
    """Keep the stylised luminance, take colour from the content (neural-style -original_colors)."""
    luma = stylised.convert("YCbCr").split()[0]
    _, cb, cr = content.resize(stylised.size).convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cb, cr)).convert("RGB")


def _tile_for(spec: EngineSpec, engine: str, provider: str, height: int, width: int, tile: int | None) -> int | None:
    """``tile`` None: tile only when the untiled loop would not fit in free memory; 0: never; N: a core of N px."""
    from onnxstyle.bench import Runner, cell_tile, free_bytes
    from onnxstyle.providers import canonical, short_name

    if tile is not None and tile < 0:
        raise UsageError(f"--tile must be positive (or 0 for never), got {tile}")
    if engine.lower() in ("ort", "onnxruntime"):
        runner = Runner("onnxruntime", short_name(canonical(provider)))
    else:
        runner = Runner(engine.lower(), "cuda" if provider.lower().startswith("cuda") else "cpu")
    return cell_tile(runner, spec, width, height, tile, free_bytes(runner))


def stylize(
    content: str | Path = DEMO_CONTENT,
    styles: Sequence[str | Path] = (DEMO_STYLE,),
    output: str | Path = "out.png",
    *,
    engine: str = "onnxruntime",
    provider: str = "cpu",
    model: str = "vgg19",
    weights: str = "auto",
    size: int | str | tuple[int, int] = 512,
    iterations: int = 1000,
    optimizer: Optimizer = "lbfgs",
    learning_rate: float = 0.02,
    content_weight: float = 5.0,
    style_weight: float = 100.0,
    tv_weight: float = 1e-3,
    content_layers: str | Sequence[str] | None = None,
    style_layers: str | Sequence[str] | None = None,
    style_blend_weights: str | Sequence[float] | None = None,
    style_scale: float = 1.0,
    init: str = "random",
    seed: int = 0,
    original_colors: bool = False,
    pooling: Pooling = "max",
    save_every: int = 0,
    threads: int | None = None,
    precision: str = "fp32",
    tile: int | None = None,
    cuda_graph: bool = False,
    progress: ProgressCallback | None = None,
) -> StylizeResult:
    """Stylise ``content`` with one or more ``styles`` and write ``output``; returns the loss history."""
    if iterations <= 0:
        raise UsageError(f"--iterations must be positive, got {iterations}")
    if optimizer not in ("lbfgs", "adam"):
        raise UsageError(f"unknown optimizer '{optimizer}'; choose lbfgs or adam")
    if style_scale <= 0:
        raise UsageError("--style-scale must be positive")
    if not styles:
        raise UsageError("at least one style image is needed")
    output = check_writable(Path(output))
    blend = _blend(len(styles), style_blend_weights)
    backbone = get_backbone(model)
    contents = backbone.validate_layers(parse_layers(content_layers, backbone.default_content_layers))
    style_names = backbone.validate_layers(parse_layers(style_layers, backbone.default_style_layers))
    target_size = size if isinstance(size, tuple) else parse_size(size)
    content_image = resize(load_image(content), target_size)
    minimum = backbone.min_size([*contents, *style_names])
    if min(content_image.size) < minimum:
        raise UsageError(
            f"image {content_image.width}x{content_image.height} is too small for layers up to "
            f"{backbone.truncated([*contents, *style_names])[-1].name} of {backbone.name}: needs at least {minimum}x{minimum}"
        )
    style_side = max(minimum, round(max(content_image.size) * style_scale))
    style_images = [resize(load_image(style), style_side) for style in styles]
    resolved = resolve(weights, backbone)
    spec = EngineSpec(backbone, tuple(contents), tuple(style_names), pooling, resolved)
    tile = _tile_for(spec, engine, provider, content_image.height, content_image.width, 0 if cuda_graph and tile is None else tile)
    runner = create_engine(
        engine, spec, provider=provider, threads=threads, sizes=[(content_image.height, content_image.width)],
        precision=precision, tile=tile, cuda_graph=cuda_graph,
    )
    device = runner.device
    loss_weights = LossWeights((content_weight,) * len(contents), (style_weight,) * len(style_names), tv_weight)
    runner.set_targets(
        runner.build_targets(to_tensor(content_image), [to_tensor(image) for image in style_images], blend, loss_weights)
    )

    generator = torch.Generator().manual_seed(seed)
    if init == "content":
        start = to_tensor(content_image)
    elif init == "random":
        start = torch.randn(to_tensor(content_image).shape, generator=generator) * 0.1 + 0.5
    else:
        start = to_tensor(resize(load_image(init), (content_image.width, content_image.height)))
    pixels = start.to(device).clone().requires_grad_(True)
    best = pixels.detach().clone()
    losses: list[float] = []
    saved: list[Path] = []
    last_terms: list[LossTerms] = []

    def finish(image: torch.Tensor, path: Path) -> Path:
        picture = to_image(image)
        if original_colors:
            picture = _luminance_transfer(picture, content_image)
        return save_image(picture, path)

    def closure() -> torch.Tensor:
        terms, grad = runner.loss_and_grad(pixels.detach())
        if not math.isfinite(terms.total) or not bool(torch.isfinite(grad).all()):
            finish(best, output)
            raise NumericalError(
                f"loss became {terms.total} at evaluation {len(losses) + 1}; saved the last good image to {output} "
                "(try a smaller learning rate or weights)"
            )
        best.copy_(pixels.detach())
        losses.append(terms.total)
        last_terms[:] = [terms]
        pixels.grad = grad.to(pixels.dtype)
        step = len(losses)
        if progress:
            progress(step, iterations, terms)
        if save_every and step % save_every == 0 and step < iterations:
            saved.append(finish(pixels.detach(), output.with_name(f"{output.stem}_{step}{output.suffix}")))
        return torch.tensor(terms.total)

    started = time.perf_counter()
    try:
        if optimizer == "lbfgs":
            lbfgs = torch.optim.LBFGS(
                [pixels], lr=1.0, max_iter=iterations, max_eval=iterations, tolerance_grad=-1.0, tolerance_change=-1.0, history_size=100
            )
            lbfgs.step(closure)
        else:
            adam = torch.optim.Adam([pixels], lr=learning_rate)
            for _ in range(iterations):
                adam.zero_grad(set_to_none=True)
                closure()
                adam.step()
    except KeyboardInterrupt:
        finish(pixels.detach(), output)
        raise Interrupted(f"interrupted after {len(losses)} iteration(s); saved the current image to {output}") from None
    seconds = time.perf_counter() - started
    finish(pixels.detach(), output)
    return StylizeResult(
        output=output,
        iterations=len(losses),
        losses=losses,
        seconds=seconds,
        engine=runner.describe(),
        weights=resolved.label,
        timing_only=resolved.weight_set.synthetic,
        final=last_terms[0] if last_terms else None,
        saved=saved,
    )


def parse_scales(text: str | Sequence[int | str]) -> list[tuple[int, int] | int]:
    """``512,1024,2048`` (longest sides) or ``960x540,1920x1080``; each must be larger than the last."""
    items = [item.strip() for item in text.split(",")] if isinstance(text, str) else [str(item) for item in text]
    scales = [parse_size(item) for item in items if item]
    if not scales:
        raise UsageError("--scales is empty; give sizes such as 512,1024,2048")
    sides = [max(scale) if isinstance(scale, tuple) else scale for scale in scales]
    if any(later <= earlier for earlier, later in zip(sides, sides[1:], strict=False)):
        raise UsageError(f"--scales must increase, got {','.join(items)}")
    return scales


def default_scales(size: tuple[int, int] | int) -> list[tuple[int, int] | int]:
    """Above 1024 px: start at 512 and double up to ``size``, as the classic multi-resolution scripts do."""
    side = max(size) if isinstance(size, tuple) else size
    if side <= 1024:
        return [size]
    scales: list[tuple[int, int] | int] = []
    current = 512
    while current < side:
        scales.append(current)
        current *= 2
    return [*scales, size]


def scale_iterations(iterations: int | str | Sequence[int], count: int) -> list[int]:
    """One count per scale; a single number N gives N at the first scale and halves it per larger scale (≥ min(N, 20))."""
    if isinstance(iterations, str):
        iterations = [int(item) for item in iterations.split(",") if item.strip()]
    if isinstance(iterations, int):
        return [max(min(20, iterations), iterations >> index) for index in range(count)]
    counts = list(iterations)
    if len(counts) != count or any(value <= 0 for value in counts):
        raise UsageError(f"--scale-iterations needs {count} positive counts (one per scale), got {counts}")
    return counts


def stylize_scales(
    content: str | Path,
    styles: Sequence[str | Path],
    output: str | Path,
    *,
    scales: Sequence[tuple[int, int] | int],
    iterations: int | Sequence[int],
    init: str = "random",
    **options: object,
) -> StylizeResult:
    """Multi-resolution: each scale starts from the previous result upsampled; the last one is ``output``.

    Intermediate results are kept beside it (``out.scale512.png``), as neural-style's multires scripts do.
    """
    output = Path(output)
    counts = scale_iterations(iterations, len(scales))
    results: list[StylizeResult] = []
    for index, (scale, count) in enumerate(zip(scales, counts, strict=True)):
        label = f"{scale[0]}x{scale[1]}" if isinstance(scale, tuple) else str(scale)
        path = output if index == len(scales) - 1 else output.with_name(f"{output.stem}.scale{label}{output.suffix}")
        start = init if index == 0 else str(results[-1].output)
        results.append(stylize(content, styles, path, size=scale, iterations=count, init=start, **options))  # type: ignore[arg-type]
    last = results[-1]
    return StylizeResult(
        output=last.output,
        iterations=sum(result.iterations for result in results),
        losses=[loss for result in results for loss in result.losses],
        seconds=sum(result.seconds for result in results),
        engine={**last.engine, "scales": [result.iterations for result in results]},
        weights=last.weights,
        timing_only=last.timing_only,
        final=last.final,
        saved=[result.output for result in results[:-1]] + [path for result in results for path in result.saved],
    )
