import numpy as np
import pytest
from PIL import Image

from onnxstyle.errors import ImageError, OutputError, UsageError
from onnxstyle.images import DEMO_CONTENT, DEMO_STYLE, load_image, parse_size, resize, save_image, to_image, to_tensor


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


@pytest.mark.parametrize("mode,suffix", [("RGBA", ".png"), ("L", ".png"), ("P", ".png"), ("RGB", ".webp"), ("RGB", ".tiff")])
def test_modes_and_formats_become_rgb(tmp_path, mode, suffix):
    Image.new(mode, (10, 8)).save(tmp_path / f"x{suffix}")
    loaded = load_image(tmp_path / f"x{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (10, 8)


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError):
        load_image(tmp_path / "bad.jpg")


def test_resize_and_sizes():
    image = Image.new("RGB", (400, 200))
    assert resize(image, 100).size == (100, 50)
    assert resize(image, (64, 48)).size == (64, 48)
    assert parse_size("1920x1080") == (1920, 1080) and parse_size(512) == 512
    for bad in ("0", "-5", "abc", "10x0"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_demo_images_are_deterministic_and_distinct():
    content, style = load_image(DEMO_CONTENT), load_image(DEMO_STYLE)
    assert np.array_equal(np.asarray(content), np.asarray(load_image(DEMO_CONTENT)))
    assert content.size == style.size == (512, 512)
    assert np.abs(np.asarray(content, float) - np.asarray(style, float)).mean() > 30


def test_tensor_round_trip_and_atomic_save(tmp_path):
    image = load_image(DEMO_CONTENT)
    assert np.array_equal(np.asarray(to_image(to_tensor(image))), np.asarray(image))
    path = save_image(image, tmp_path / "out.png")
    assert Image.open(path).size == image.size and not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(OutputError, match="does not exist"):
        save_image(image, tmp_path / "missing" / "out.png")
    with pytest.raises(OutputError, match="unsupported image format"):
        save_image(image, tmp_path / "out.gif")
