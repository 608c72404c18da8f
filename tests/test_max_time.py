"""stylize --max-time: a wall-time budget that ends the run with the best image so far (a fake clock, so no test times anything)."""

import math
from types import SimpleNamespace

import pytest
from PIL import Image

from onnxstyle.errors import UsageError
from onnxstyle.images import DEMO_CONTENT, DEMO_STYLE
from onnxstyle.stylize import TIME_BOUND_ITERATIONS, StylizeConfig, stylize, stylize_scales

FAST = dict(weights="synthetic", threads=2, model="nin", engine="onnxruntime")


class Clock:
    """Time that moves only when the engine evaluates: one second per loss+gradient."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


class Ticking:
    def __init__(self, engine, clock):
        self.engine, self.clock, self.calls = engine, clock, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_and_grad(self, image):
        self.calls += 1
        self.clock.now += 1.0
        return self.engine.loss_and_grad(image)


@pytest.fixture
def clock(monkeypatch):
    from onnxstyle import stylize as module

    fake = Clock()
    fake.setup_seconds = 0.0
    monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    real = module.create_engine
    engines = []

    def create(*args, **kwargs):
        fake.now += fake.setup_seconds
        engines.append(Ticking(real(*args, **kwargs), fake))
        return engines[-1]

    monkeypatch.setattr(module, "create_engine", create)
    fake.engines = engines
    return fake


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 1e12])
def test_max_time_must_be_a_sane_positive_number(value):
    with pytest.raises(UsageError, match="--max-time"):
        StylizeConfig(max_time=value, **FAST)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_the_budget_ends_the_run_and_the_best_image_is_written(clock, tmp_path, optimizer):
    output = tmp_path / "out.png"
    result = stylize(
        output=output, size=64, iterations=TIME_BOUND_ITERATIONS, optimizer=optimizer, deadline=clock.now + 5.5, **FAST
    )
    assert result.ended_by == "time"
    # No evaluation starts that the last one's duration says would end past the budget: five of 1 s fit in 5.5 s.
    assert clock.engines[0].calls == len(result.losses) == 5
    assert max(Image.open(output).size) == 64
    assert result.best_loss == min(result.losses) < result.losses[0]


def test_iterations_end_the_run_when_they_come_first(clock, tmp_path):
    result = stylize(output=tmp_path / "out.png", size=64, iterations=3, optimizer="adam", deadline=clock.now + 100, **FAST)
    assert result.ended_by == "iterations"
    assert len(result.losses) == 3


def test_a_budget_spent_before_any_improvement_writes_nothing(clock, tmp_path):
    output = tmp_path / "out.png"
    with pytest.raises(UsageError, match="ran out after 1 evaluation"):
        stylize(output=output, size=64, iterations=50, optimizer="adam", deadline=clock.now - 1, max_time=1, **FAST)
    assert not output.exists()


def test_scales_share_the_budget_by_their_work(clock, tmp_path):
    output = tmp_path / "out.png"
    result = stylize_scales(
        DEMO_CONTENT, [DEMO_STYLE], output, scales=[64, 128],
        iterations=TIME_BOUND_ITERATIONS, optimizer="adam", deadline=clock.now + 30.5, **FAST,
    )
    (engine,) = clock.engines  # both scales run untiled: one engine, set up once
    first, second = result.engine["scales"]
    assert result.ended_by == "time"
    # work at 128 px is 4x the pixels at half the iterations: 2/3 of the budget (each scale stops before an
    # evaluation that would end past its share)
    assert first + second == engine.calls == 30 and second > first
    assert max(Image.open(output).size) == 128
    # the written image's loss is the finest scale's own: a coarse scale's losses are of another problem
    assert result.best_loss == min(result.losses[-second:]) and result.written_losses == result.losses[-second:]


def test_engine_set_up_spends_the_budget_not_the_first_scales_share(clock, tmp_path):
    clock.setup_seconds = 10.0
    result = stylize_scales(
        DEMO_CONTENT, [DEMO_STYLE], tmp_path / "out.png", scales=[64, 128],
        iterations=TIME_BOUND_ITERATIONS, optimizer="adam", deadline=clock.now + 40.5, **FAST,
    )
    # 30.5 s left once the engine is built, shared as above: the 64-px scale's fifth is not eaten by the set-up
    assert result.engine["scales"][0] >= 5


def test_a_coarse_scale_whose_share_ends_before_it_improved_passes_its_start_on(clock, tmp_path):
    output = tmp_path / "out.png"
    result = stylize_scales(
        DEMO_CONTENT, [DEMO_STYLE], output, scales=[64, 128],
        iterations=TIME_BOUND_ITERATIONS, optimizer="adam", deadline=clock.now + 2.5, **FAST,
    )
    # the 64-px scale's third (0.83 s) allows one evaluation, which cannot improve on itself: nothing written for it,
    # and the finest scale still gets the rest of the budget and writes the output
    assert result.engine["scales"] == [1, 2]
    assert output.exists() and not (tmp_path / "out.scale64.png").exists()
    assert result.saved == []


def test_a_scale_too_small_for_the_layers_is_one_line(tmp_path):
    from onnxstyle.errors import ImageError

    with pytest.raises(ImageError, match="--scales 20: image .* too small for nin"):
        stylize_scales(DEMO_CONTENT, [DEMO_STYLE], tmp_path / "out.png", scales=[20, 64], iterations=2, **FAST)
