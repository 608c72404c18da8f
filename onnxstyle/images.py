"""Image I/O: tolerant loading, longest-side resizing, atomic saving and built-in demo images."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from onnxstyle.errors import ImageError, UsageError
from onnxstyle.files import check_output, write_atomic

DEMO_CONTENT = "demo:content"
DEMO_STYLE = "demo:style"
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def demo_content(size: int = 512) -> Image.Image:
    """A procedurally drawn scene (sky, sun, hills, house) so every command has an offline default."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, 3), np.float32)
    image[..., 0] = 0.35 + 0.4 * y
    image[..., 1] = 0.55 + 0.3 * y
    image[..., 2] = 0.95 - 0.2 * y
    sun = (x - 0.75) ** 2 + (y - 0.22) ** 2 < 0.01
    image[sun] = (1.0, 0.85, 0.3)
    hills = y > 0.62 + 0.08 * np.sin(7 * x) + 0.04 * np.cos(17 * x)
    image[hills] = np.stack([0.2 + 0.1 * y, 0.5 - 0.2 * y, 0.2 + 0 * y], -1)[hills]
    house = (np.abs(x - 0.32) < 0.12) & (y > 0.48) & (y < 0.72)
    image[house] = (0.85, 0.8, 0.7)
    roof = (y < 0.48) & (y > 0.36) & (np.abs(x - 0.32) < (y - 0.36) * 1.5)
    image[roof] = (0.65, 0.15, 0.12)
    door = (np.abs(x - 0.32) < 0.025) & (y > 0.6) & (y < 0.72)
    image[door] = (0.3, 0.18, 0.1)
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def demo_style(size: int = 512) -> Image.Image:
    """Swirling brush-stroke-like bands in a warm-cold palette, in the spirit of a starry night."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    radius = np.hypot(x - 0.5, y - 0.5)
    angle = np.arctan2(y - 0.5, x - 0.5)
    swirl = np.sin(24 * radius + 3 * angle + 4 * np.sin(9 * x)) * 0.5 + 0.5
    strokes = np.sin(60 * (x + 0.3 * np.sin(11 * y))) * 0.5 + 0.5
    tone = 0.6 * swirl + 0.4 * strokes
    palette_a = np.array([0.08, 0.15, 0.45], np.float32)
    palette_b = np.array([0.95, 0.8, 0.25], np.float32)
    image = palette_a + (palette_b - palette_a) * tone[..., None] ** 1.5
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


PIXEL_LIMIT_VARIABLE = "ONNXSTYLE_MAX_IMAGE_PIXELS"


def pixel_limit() -> int:
    """The most pixels an input image may have: Pillow's guard against decompression bombs, or ``$ONNXSTYLE_MAX_IMAGE_PIXELS``."""
    text = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not text:
        return int(Image.MAX_IMAGE_PIXELS or 89_478_485)
    try:
        value = int(text)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        raise UsageError(f"{PIXEL_LIMIT_VARIABLE} must be a positive number of pixels, got '{text}'") from None


def load_image(source: str | Path) -> Image.Image:
    """Open PNG/JPEG/WebP/TIFF with EXIF orientation applied and any mode converted to 8-bit RGB.

    16-bit and 32-bit integer images are scaled by their range and float images read as [0, 1] (or
    [0, 255] when brighter), rather than clipped to white; transparency is composited on white.
    """
    if str(source) == DEMO_CONTENT:
        return demo_content()
    if str(source) == DEMO_STYLE:
        return demo_style()
    path = Path(source)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    limit = pixel_limit()
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the limit is checked here, from the header
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > limit:
                raise ImageError(
                    f"{path}: {width}x{height} is {width * height:,} pixels, over the {limit:,}-pixel limit that guards "
                    f"against decompression bombs; set {PIXEL_LIMIT_VARIABLE} to allow more"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError as error:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: corrupt or unreadable image ({error})") from error
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A single-channel 16/32-bit integer or float image as 8-bit grey, scaled by its range (Pillow would clip)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = float(values.max()) if values.size else 1.0
        scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else peak
    else:
        peak = float(values.max()) if values.size else 0.0
        scale = 65535.0 if image.mode.startswith("I;16") or peak <= 65535.0 else peak
    grey = np.clip(values / scale, 0.0, 1.0) * 255.0 + 0.5
    return Image.fromarray(grey.astype(np.uint8), mode="L")


def parse_size(text: str | int) -> tuple[int, int] | int:
    """``512`` means longest side 512; ``1920x1080`` means exactly width×height."""
    value = str(text).strip().lower()
    try:
        if "x" in value:
            width, height = (int(part) for part in value.split("x", 1))
            if width <= 0 or height <= 0:
                raise ValueError
            return (width, height)
        size = int(value)
        if size <= 0:
            raise ValueError
        return size
    except ValueError:
        raise UsageError(f"invalid size '{text}': use a positive integer (longest side) or WIDTHxHEIGHT") from None


def resize_dimensions(current: tuple[int, int], size: tuple[int, int] | int) -> tuple[int, int]:
    """(width, height) after ``resize``: the longest side becomes ``size`` (aspect kept), or exactly (width, height)."""
    if isinstance(size, tuple):
        return size
    scale = size / max(current)
    return (max(1, round(current[0] * scale)), max(1, round(current[1] * scale)))


def resize(image: Image.Image, size: tuple[int, int] | int) -> Image.Image:
    """Resize so the longest side is ``size`` (aspect kept), or to an exact (width, height)."""
    target = resize_dimensions(image.size, size)
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    array = tensor.detach().float().cpu().clamp(0, 1).squeeze(0).permute(1, 2, 0).numpy()
    return Image.fromarray((array * 255.0 + 0.5).astype(np.uint8))


def check_writable(path: Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail before any work is done if ``path`` cannot take an image (or is one of ``inputs``)."""
    return check_output(path, formats=SAVE_FORMATS, inputs=inputs, what="image")


def save_image(image: Image.Image, path: Path, *, tag: str | None = None) -> Path:
    """Write atomically (see ``files``), so an interrupted save leaves the old image or the new one.

    ``tag`` (PNG only) names the writer in the file's ``Software`` field, so a later run can tell its own files
    (which it may replace) from a user's (which it may not): ``written_by``.
    """
    path = check_writable(Path(path))
    image_format = SAVE_FORMATS[path.suffix.lower()]
    options: dict[str, Any] = {}
    if tag and image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", tag)
        options["pnginfo"] = info
    return write_atomic(path, lambda out: image.save(out, format=image_format, **options))


def written_by(path: Path, tag: str) -> bool:
    """Whether ``path`` is a PNG that ``save_image(..., tag=tag)`` wrote."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and getattr(image, "text", {}).get("Software") == tag
    except (OSError, UnidentifiedImageError, AttributeError):
        return False


def demo_pair(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The built-in content and style images at exactly width×height, as (1, 3, H, W) tensors."""
    side = max(width, height)
    return to_tensor(demo_content(side).resize((width, height))), to_tensor(demo_style(side).resize((width, height)))
