"""The machine's fp32 GEMM roof: what GFLOP/s a cell achieves is read against it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from onnxstyle.bench.records import GemmRate
from onnxstyle.precision import set_tf32


def _best_of(run: Callable[[], object], flop: float, repeats: int, synchronize: Callable[[], None]) -> list[float]:
    run()
    samples = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        samples.append(flop / (time.perf_counter() - started) / 1e9)
    return samples


def _ort_matmul(size: int, threads: int) -> Callable[[np.ndarray, np.ndarray], object]:
    """One MatMul node on ONNX Runtime's CPU provider (MLAS), the library our CPU graphs run on."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def square(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size])

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [square("a"), square("b")], [square("c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda a, b: session.run(None, {"a": a, "b": b})


def measure_gemm(device: str = "cpu", size: int = 2048, repeats: int = 7, threads: int | None = None) -> GemmRate:
    """Best-of-``repeats`` square SGEMM: on CPU through torch, numpy and ONNX Runtime; on GPU cuBLAS, TF32 off."""
    if threads is not None:
        torch.set_num_threads(threads)
    target = torch.device(device)
    set_tf32(target, "fp32")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(target)
    b = torch.randn(size, size, generator=generator).to(target)
    flop = 2.0 * size**3
    threads = torch.get_num_threads()
    rates = {"torch": _best_of(lambda: torch.matmul(a, b), flop, repeats, lambda: synchronize(device))}
    if target.type == "cpu":
        a_array, b_array = a.numpy(), b.numpy()
        rates["numpy"] = _best_of(lambda: a_array @ b_array, flop, repeats, lambda: None)
        try:
            matmul = _ort_matmul(size, threads)
            rates["onnxruntime"] = _best_of(lambda: matmul(a_array, b_array), flop, repeats, lambda: None)
        except Exception:  # noqa: BLE001 - the roof stays measured by the others
            pass
    library = max(rates, key=lambda name: max(rates[name]))
    others = {name: max(samples) for name, samples in rates.items() if name != library}
    return GemmRate(device, size, threads, rates[library], library, others)


def synchronize(device: str) -> None:
    """Wait for the device's queue: a clock read before it would time the launch, not the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
