"""`onnxstyle providers --check`: is the GPU really used, and does it compute what the CPU computes?

ONNX Runtime fails quietly in three ways that a speed figure cannot show: nodes fall back to the CPU
(with copies between), cuDNN or cuBLAS are missing until the first run, and TF32 is used where fp32
was asked for. Each usable provider therefore runs our real loss+gradient graph on a small network,
with its node placement read from ORT's profiler, its answer compared with the CPU provider and with
float64, and dedicated matmul and convolution probes that tell fp32 from TF32 by their error.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.engines.base import EngineSpec
from onnxstyle.errors import first_line
from onnxstyle.exporters.validation import relative_error
from onnxstyle.gradient_checks import (
    GradientReference,
    check_side,
    errors_against,
    float64_gradient,
    gradient_check_images,
    reference_gradient,
)
from onnxstyle.plugin_eps import ep_name_of
from onnxstyle.precision import PROVIDER_PARITY_TOLERANCE, TF32_ERROR_FLOOR, set_tf32, tf32_override
from onnxstyle.ort_providers import (
    DYNAMIC_SHAPE_PROVIDERS,
    ProviderConfig,
    ProviderStatus,
    convolve,
    create_session,
    probe_providers,
    short_name,
)
from onnxstyle.weights import resolve

CHECK_BACKBONE = "nin"
# Operators that only compute shapes: on fixed-shape providers ORT should have folded every one of them.
SHAPE_OPS = ("Shape", "Size", "ConstantOfShape", "Range")
MEMCPY_OPS = ("MemcpyToHost", "MemcpyFromHost")
# Libraries whose presence in the process says which CUDA stack really loaded.
GPU_LIBRARIES = re.compile(r"lib(cudart|cublas|cublasLt|cudnn\w*|cufft|curand|nvrtc|nvinfer\w*|onnxruntime_providers_\w+)\.so[.\d]*$")
# TF32 probes: long enough sums that fp32 lands near 1e-6 relative and TF32's 10-bit mantissa near 1e-3.
TF32_MATMUL = ((256, 2048), (2048, 256))
TF32_CONV = ((1, 128, 16, 16), (128, 128, 3, 3))


@dataclass
class Placement:
    """Which provider ran each node of one profiled run (from ORT's profiler, not from the session's claims)."""

    nodes: dict[str, int] = field(default_factory=dict)  # provider → nodes it ran
    elsewhere: list[str] = field(default_factory=list)  # "op (provider)" of nodes not on the checked provider
    memcpy: int = 0
    shape_ops: int = 0


@dataclass
class ProviderCheck:
    """One runner's verdict: usable, placed where asked, equal to the CPU, and fp32 where fp32 was asked."""

    runner: str
    usable: bool
    reason: str = ""
    placement: Placement | None = None
    loss_error_vs_cpu: float | None = None
    grad_error_vs_cpu: float | None = None
    grad_error_vs_fp64: float | None = None
    cpu_grad_error_vs_fp64: float | None = None
    tf32_errors: dict[str, float] = field(default_factory=dict)  # probe → relative error against float64
    libraries: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.usable and not self.problems

    @property
    def tf32(self) -> bool | None:
        """Whether the fp32 probes came back with TF32's error (None: not measured)."""
        if not self.tf32_errors:
            return None
        return any(error > TF32_ERROR_FLOOR for error in self.tf32_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "tf32": self.tf32}


@dataclass
class CheckProblem:
    """The small problem every runner solves: the same fp32 targets and answer, and the float64 answer."""

    spec: EngineSpec
    image: torch.Tensor
    reference: GradientReference
    float64_grad: np.ndarray


def loaded_libraries() -> list[str]:
    """The CUDA, cuDNN, TensorRT and ORT provider libraries mapped into this process, with where they came from."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found: dict[str, str] = {}
    for line in maps.read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        name = Path(path).name
        if GPU_LIBRARIES.search(name):
            found.setdefault(name, str(Path(path).parent))
    return [f"{name} ({folder})" for name, folder in sorted(found.items())]


def read_placement(profile: Path, provider: str) -> Placement:
    """Count the nodes each provider ran, the copies between devices and shape operators left, from a profile."""
    events = json.loads(profile.read_text())
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and "op_name" in args:
            seen[event.get("name", "").removesuffix("_kernel_time")] = (args["op_name"], args["provider"])
    placement = Placement()
    for op, runs_on in seen.values():
        placement.nodes[runs_on] = placement.nodes.get(runs_on, 0) + 1
        placement.memcpy += op in MEMCPY_OPS
        placement.shape_ops += op in SHAPE_OPS
        if runs_on != provider:
            placement.elsewhere.append(f"{op} ({short_name(runs_on)})")
    return placement


def placement_problems(placement: Placement, provider: str) -> list[str]:
    problems = []
    if not placement.nodes:
        problems.append("the profiler recorded no nodes")
    if placement.elsewhere:
        listed = ", ".join(sorted(set(placement.elsewhere)))
        problems.append(f"{len(placement.elsewhere)} nodes ran off {short_name(provider)}: {listed}")
    if placement.memcpy:
        problems.append(f"{placement.memcpy} Memcpy nodes copy between devices")
    if placement.shape_ops and provider not in DYNAMIC_SHAPE_PROVIDERS:
        problems.append(f"{placement.shape_ops} shape operators were not folded (fixed shapes expected)")
    return problems


def check_problem(threads: int | None = None) -> CheckProblem:
    """NIN with synthetic weights at the check size: every operator type of the real graphs, small enough for any device."""
    backbone = get_backbone(CHECK_BACKBONE)
    spec = EngineSpec.defaults(backbone, resolve("synthetic", backbone))
    content, style, image = gradient_check_images(check_side(spec))
    reference = reference_gradient(spec, content, style, image, threads)
    return CheckProblem(spec, image, reference, float64_gradient(spec, content, style, image))


def tf32_probe_values() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(1)
    shapes = {"a": TF32_MATMUL[0], "b": TF32_MATMUL[1], "x": TF32_CONV[0], "w": TF32_CONV[1]}
    return {name: generator.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def tf32_expected(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"matmul": values["a"].astype(np.float64) @ values["b"].astype(np.float64), "conv": convolve(values["x"], values["w"], 1)}


def tf32_probe_model() -> bytes:
    """A long MatMul and a wide 3×3 Conv in fp32, fixed shapes: what cuBLAS and cuDNN would run in TF32 if allowed."""
    from onnx import TensorProto, helper, numpy_helper

    values = tf32_probe_values()
    expected = tf32_expected(values)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["matmul"]), helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1])],
        "tf32_probe",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(values[name].shape)) for name in ("a", "x")],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(expected[name].shape)) for name in ("matmul", "conv")],
        initializer=[numpy_helper.from_array(values["b"], "b"), numpy_helper.from_array(values["w"], "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _errors(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    expected = tf32_expected(tf32_probe_values())
    return {name: float(relative_error(np.asarray(outputs[name], np.float64), expected[name])) for name in expected}


def ort_tf32_errors(config: ProviderConfig) -> dict[str, float]:
    session = create_session(tf32_probe_model(), config)
    values = tf32_probe_values()
    matmul, conv = session.run(["matmul", "conv"], {"a": values["a"], "x": values["x"]})
    return _errors({"matmul": matmul, "conv": conv})


def torch_tf32_errors(device: torch.device) -> dict[str, float]:
    values = {name: torch.from_numpy(value).to(device) for name, value in tf32_probe_values().items()}
    set_tf32(device, "fp32")
    matmul = values["a"] @ values["b"]
    conv = torch.nn.functional.conv2d(values["x"], values["w"], padding=1)
    return _errors({"matmul": matmul.cpu().numpy(), "conv": conv.cpu().numpy()})


def _compare(check: ProviderCheck, problem: CheckProblem, loss: float, grad: np.ndarray) -> None:
    """Against torch autograd in fp32 on the CPU (the same targets), and against float64."""
    check.grad_error_vs_fp64 = relative_error(grad, problem.float64_grad)
    check.cpu_grad_error_vs_fp64 = relative_error(problem.reference.grad, problem.float64_grad)
    check.loss_error_vs_cpu, check.grad_error_vs_cpu = errors_against(problem.reference, loss, grad)
    if not (check.loss_error_vs_cpu <= PROVIDER_PARITY_TOLERANCE and check.grad_error_vs_cpu <= PROVIDER_PARITY_TOLERANCE):
        check.problems.append(
            f"differs from torch fp32 on the CPU by {check.grad_error_vs_cpu:.1e} (gradient) and {check.loss_error_vs_cpu:.1e} (loss), "
            f"tolerance {PROVIDER_PARITY_TOLERANCE:g}"
        )
    if check.tf32:
        worst = max(check.tf32_errors.items(), key=lambda item: item[1])
        check.problems.append(
            f"fp32 was asked for, but its {worst[0]} is {worst[1]:.1e} from float64, as TF32 or bf16 rounds (fp32 lands below {TF32_ERROR_FLOOR:g})"
        )


def check_ort_provider(status: ProviderStatus, problem: CheckProblem, threads: int | None) -> ProviderCheck:
    """Our loss+gradient graph on one ORT provider, with CPU fallback allowed so that any fallback is seen and counted."""
    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine

    check = ProviderCheck(f"ort-{short_name(status.name)}", status.usable, status.reason)
    if not status.usable:
        return check
    side = problem.image.shape[-1]
    with tempfile.TemporaryDirectory(prefix="onnxstyle-check-") as folder:
        config = ProviderConfig(status.name, threads=threads, cpu_fallback=True, profile_prefix=str(Path(folder) / "check"))
        try:
            engine = OnnxRuntimeEngine(problem.spec, config, [(side, side)], winograd=False)
            engine.set_targets(problem.reference.targets)
            terms, grad = engine.loss_and_grad(problem.image.to(engine.device))
            # what the plugin claimed: ORT's profiler names the EP that ran each node (OpenVINO: its fused subgraphs)
            check.placement = read_placement(Path(engine.end_profiling("loss")), ep_name_of(status.name))
            check.tf32_errors = ort_tf32_errors(ProviderConfig(status.name, threads=threads))
        except Exception as error:  # ORT's Fail/RuntimeException/EPFail derive from Exception, not RuntimeError
            # usable by the probe, yet our graph fails on it: a problem of the check (exit 8), not an unusable provider
            check.reason = f"the loss graph fails: {first_line(error)}"
            check.problems.append(check.reason)
            return check
    check.problems += placement_problems(check.placement, ep_name_of(status.name))
    _compare(check, problem, terms.total, grad.detach().cpu().numpy())
    return check


def check_torch_cuda(problem: CheckProblem) -> ProviderCheck:
    from onnxstyle.engines.torch_engine import TorchEngine

    check = ProviderCheck("torch-cuda", True, "ok")
    try:
        engine = TorchEngine(problem.spec, "cuda")
        engine.set_targets(problem.reference.targets)
        terms, grad = engine.loss_and_grad(problem.image)
        check.tf32_errors = torch_tf32_errors(engine.device)
    except Exception as error:  # a CUDA error or out-of-memory is a finding here, not a crash
        check.reason = f"the loss graph fails: {first_line(error)}"
        check.problems.append(check.reason)
        return check
    _compare(check, problem, terms.total, grad.detach().cpu().numpy())
    return check


def check_providers(*, threads: int | None = None) -> list[ProviderCheck]:
    """Check every provider ONNX Runtime lists, and torch's CUDA device when there is one; unusable ones say why."""
    problem = check_problem(threads)
    checks = [check_ort_provider(status, problem, threads) for status in probe_providers()]
    if torch.cuda.is_available():
        checks.append(check_torch_cuda(problem))
    else:
        checks.append(ProviderCheck("torch-cuda", False, "torch.cuda.is_available() is False"))
    libraries = loaded_libraries()
    override = tf32_override()
    for check in checks:
        check.libraries = libraries if check.runner != "ort-cpu" else []
        if override and check.usable and check.runner != "ort-cpu":
            check.problems.append(override)
    return checks
