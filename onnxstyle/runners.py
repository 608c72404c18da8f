"""What runs the style loop: an ONNX Runtime provider, a torch device, or the plain eager loop.

A runner is the unit ``bench`` measures and ``stylize`` and ``converge`` run; parsing, usability and
precision support are decided here once, so every command answers "can this run here?" the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onnxstyle.errors import ProviderError, UsageError
from onnxstyle.plugin_eps import parse_target
from onnxstyle.precision import supported, why_not
from onnxstyle.ort_providers import CUDA_PROVIDERS, CUDA_TARGETS, canonical, known_providers, probe_provider, short_name


@dataclass(frozen=True)
class Runner:
    """What runs the loop: our engines on an ORT provider or torch device, or the plain eager loop."""

    engine: str  # onnxruntime | torch | eager
    target: str  # ORT provider short name, or torch device

    @property
    def label(self) -> str:
        return f"{'ort' if self.engine == 'onnxruntime' else self.engine}-{self.target}"

    @property
    def device(self) -> str:
        """The torch device the loop's tensors live on."""
        return "cuda" if self.target in CUDA_TARGETS else "cpu"


def parse_runner(text: str) -> Runner:
    """``cpu``/``cuda``/``tensorrt`` (ONNX Runtime providers), ``ort-cpu``, ``openvino:gpu``, ``torch``, ``torch-cuda``, ``eager``…"""
    name = text.strip().replace(":", "-")
    if not name:
        raise UsageError("empty provider name in --provider")
    head, _, tail = name.lower().partition("-")
    if head in ("torch", "eager"):
        if tail not in ("", "cpu", "cuda"):
            raise UsageError(f"unknown {head} device '{tail}' in --provider; use {head}, {head}-cpu or {head}-cuda")
        return Runner(head, tail or "cpu")
    if head in ("ort", "onnxruntime"):
        name = name.partition("-")[2] or "cpu"
    plugin = parse_target(name)  # an unknown plugin device is refused here, naming the plugin's devices
    if plugin is not None:
        return Runner("onnxruntime", plugin.name)
    try:
        return Runner("onnxruntime", short_name(canonical(name)))
    except UsageError:
        raise UsageError(
            f"unknown provider '{text}'; use ONNX Runtime providers (cpu, cuda, tensorrt, openvino, openvino:gpu, …, or ort-NAME), "
            "torch, torch-cuda, eager, eager-cuda, or all"
        ) from None


def runner_status(runner: Runner) -> str | None:
    """Why ``runner`` cannot run here, or ``None`` when it can (ORT providers are probed for real)."""
    if runner.engine in ("torch", "eager"):
        if runner.target == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "torch.cuda.is_available() is False"
        return None
    status = probe_provider(canonical(runner.target))
    return None if status.usable else status.reason


def all_runners() -> list[Runner]:
    """Every runner this installation knows about, usable or not (plugin EPs included, installed or not)."""
    runners = [Runner("onnxruntime", short_name(name)) for name in known_providers()]
    runners += [Runner(engine, device) for engine in ("torch", "eager") for device in ("cpu", "cuda")]
    return runners


def select_runners(text: str | None) -> tuple[list[Runner], dict[Runner, str]]:
    """(runners to measure, runners skipped with their reason).

    No option: every usable runner, silently leaving the rest out. ``all``: every known runner,
    unusable ones reported as skipped. An explicit list: an unusable runner is an error.
    """
    if text is None or text.strip().lower() == "all":
        usable: list[Runner] = []
        skipped: dict[Runner, str] = {}
        for runner in all_runners():
            reason = runner_status(runner)
            if reason is None:
                usable.append(runner)
            else:
                skipped[runner] = reason
        return usable, (skipped if text is not None else {})
    runners = list(dict.fromkeys(parse_runner(item) for item in text.split(",")))
    require_usable(runners)
    return runners, {}


def require_usable(runners: Sequence[Runner]) -> None:
    """Runners named explicitly must run here: the first that cannot is a ProviderError with its reason."""
    for runner in runners:
        reason = runner_status(runner)
        if reason is not None:
            raise ProviderError(f"{runner.label} is not usable here: {reason}")


def precision_support(runner: Runner, precision: str) -> str | None:
    """None when ``runner`` can run ``precision`` here, else the one-line reason."""
    allowed, _ = supported(runner.engine, runner.target)
    return None if precision in allowed else f"{precision} not supported ({'/'.join(allowed)} only)"


def check_precisions(runners: Sequence[Runner], precisions: Sequence[str]) -> None:
    """A precision no selected runner can run is a usage error, not a table of skipped cells."""
    for precision in precisions:
        if runners and all(precision_support(runner, precision) for runner in runners):
            first = runners[0]
            allowed, _ = supported(first.engine, first.target)
            reason = why_not(first.engine, first.target, precision)
            able = sorted({runner.label for runner in all_runners() if not runner_status(runner) and not precision_support(runner, precision)})
            hint = f"runners that can: {', '.join(able)}" if able else "no runner here can"
            raise UsageError(
                f"no selected runner can run {precision}: {first.label} supports {', '.join(allowed)} ({reason}); {hint}"
            )




def takes_cuda_graph(runner: Runner) -> bool:
    """Whether ``--cuda-graph`` applies: ORT on a provider whose tensors live in CUDA memory."""
    return runner.engine == "onnxruntime" and canonical(runner.target) in CUDA_PROVIDERS
