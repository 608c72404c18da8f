"""The loop: engines agree, the loss falls, runs reproduce, bad input fails cleanly."""

import numpy as np
import pytest
from PIL import Image

from onnxstyle.errors import NumericalError, UsageError
from onnxstyle.stylize import stylize

FAST = dict(weights="synthetic", threads=2)


@pytest.mark.parametrize("model,optimizer", [("vgg", "lbfgs"), ("nin", "adam")])
def test_engines_follow_the_same_trajectory(tmp_path, model, optimizer):
    results = {
        engine: stylize(output=tmp_path / f"{engine}.png", engine=engine, model=model, size=64, iterations=30, optimizer=optimizer, **FAST)
        for engine in ("torch", "onnxruntime")
    }
    torch_losses, ort_losses = results["torch"].losses, results["onnxruntime"].losses
    assert len(torch_losses) == len(ort_losses) == 30
    assert ort_losses[0] == pytest.approx(torch_losses[0], rel=1e-5)
    assert ort_losses[-1] == pytest.approx(torch_losses[-1], rel=0.01)


def test_demo_defaults_reduce_the_loss_by_90_percent(tmp_path):
    result = stylize(output=tmp_path / "demo.png", size=128, iterations=100, **FAST)
    assert result.loss_reduction >= 0.90
    assert result.timing_only
    assert Image.open(tmp_path / "demo.png").size == (128, 128)


def test_runs_are_bit_for_bit_reproducible(tmp_path):
    first = stylize(output=tmp_path / "a.png", model="nin", size=64, iterations=10, seed=3, **FAST)
    second = stylize(output=tmp_path / "b.png", model="nin", size=64, iterations=10, seed=3, **FAST)
    assert first.losses == second.losses
    assert np.array_equal(np.asarray(Image.open(first.output)), np.asarray(Image.open(second.output)))
    other = stylize(output=tmp_path / "c.png", model="nin", size=64, iterations=10, seed=4, **FAST)
    assert other.losses != first.losses


def test_options_blend_colours_and_snapshots(tmp_path):
    result = stylize(
        "demo:content", ["demo:style", "demo:content"], tmp_path / "out.png", model="nin", size=64, iterations=4,
        optimizer="adam", style_blend_weights="3,1", original_colors=True, save_every=2, init="content", **FAST,
    )
    assert [path.name for path in result.saved] == ["out_2.png"]
    content = np.asarray(Image.open(tmp_path / "out.png").convert("YCbCr"), float)
    assert content.shape == (64, 64, 3)


def test_inconsistent_options_fail(tmp_path):
    with pytest.raises(UsageError, match="2 style image"):
        stylize("demo:content", ["demo:style", "demo:style"], tmp_path / "x.png", style_blend_weights="1", **FAST)
    with pytest.raises(UsageError, match="too small"):
        stylize(output=tmp_path / "x.png", size=8, **FAST)
    with pytest.raises(UsageError, match="iterations"):
        stylize(output=tmp_path / "x.png", iterations=0, **FAST)
    assert not (tmp_path / "x.png").exists()


def test_nan_loss_stops_and_keeps_the_last_good_image(tmp_path):
    with pytest.raises(NumericalError, match="saved the last good image"):
        stylize(output=tmp_path / "nan.png", model="nin", size=64, iterations=5, optimizer="adam", style_weight=float("inf"), **FAST)
    assert (tmp_path / "nan.png").exists()
