"""One table of defaults: it loads nothing heavy, and every entry point takes its defaults from it."""

import inspect
import subprocess
import sys

from onnxstyle import defaults
from onnxstyle.bench.options import BenchOptions
from onnxstyle.losses import LossWeights
from onnxstyle.stylize import StylizeConfig, stylize


def test_the_table_imports_neither_torch_nor_onnxruntime():
    script = "import sys, onnxstyle.defaults; print(','.join(n for n in ('torch', 'onnxruntime', 'onnx') if n in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == ""


def test_stylize_the_loss_and_the_bench_take_their_defaults_from_the_table():
    config = StylizeConfig()
    assert (config.iterations, config.learning_rate) == (defaults.ITERATIONS, defaults.LEARNING_RATE)
    assert (config.content_weight, config.style_weight, config.tv_weight) == (defaults.CONTENT_WEIGHT, defaults.STYLE_WEIGHT, defaults.TV_WEIGHT)
    assert inspect.signature(stylize).parameters["size"].default == defaults.SIZE
    assert LossWeights.neural_style(1, 2) == LossWeights((defaults.CONTENT_WEIGHT,), (defaults.STYLE_WEIGHT,) * 2, defaults.TV_WEIGHT)
    assert BenchOptions([], [], []).as_dict()["optimizer"] == f"adam lr={defaults.LEARNING_RATE}"


def test_the_stylize_options_default_to_the_table():
    from typer.main import get_command

    from onnxstyle.cli import app

    command = get_command(app).commands["stylize"]  # type: ignore[attr-defined]
    options = {parameter.name: parameter for parameter in command.params}
    assert {name: options[name].default for name in ("learning_rate", "content_weight", "style_weight", "tv_weight")} == {
        "learning_rate": defaults.LEARNING_RATE,
        "content_weight": defaults.CONTENT_WEIGHT,
        "style_weight": defaults.STYLE_WEIGHT,
        "tv_weight": defaults.TV_WEIGHT,
    }
    assert f"{defaults.DEMO_SIZE} px, {defaults.DEMO_ITERATIONS} iterations" in (options["demo"].help or "")
    assert f"default {defaults.ITERATIONS}" in (options["iterations"].help or "")
    assert f"default {defaults.SIZE}" in (options["size"].help or "")
