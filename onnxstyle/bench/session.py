"""Inside a cell's worker: build the loop once, then take the steps, clocks and counters the parent asks for."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from typing import Any

import psutil
import torch

from onnxstyle.bench.gemm import synchronize
from onnxstyle.bench.loops import Loop
from onnxstyle.bench.records import LoopRecipe, Window
from onnxstyle.images import demo_pair
from onnxstyle.interference import CpuSnapshot, WindowLoad, allowed_cpus
from onnxstyle.workers import resolve_factory


def _resident_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _peak_resident_bytes() -> int:
    """This process's RSS high-water mark, kept by the kernel: nothing sampled, nothing missed.

    (Linux folds per-thread counters into it lazily, so it can trail the current RSS by a few pages.)
    """
    info = psutil.Process().memory_info()
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(int(info.rss), int(peak if sys.platform == "darwin" else peak * 1024))
    except ImportError:
        return int(getattr(info, "peak_wset", info.rss))


class CellSession:
    """One cell's loop inside its worker: built once, then driven call by call by the parent.

    Every clock is read here, next to the loop, and every GPU queue drained before it is read; the parent
    only decides what runs when.
    """

    def __init__(self, recipe: LoopRecipe, device: str, threads: int) -> None:
        self.recipe = recipe
        self.device = device
        torch.set_num_threads(threads)
        self.cpus = allowed_cpus()
        self.rss_before = _resident_bytes()
        self.device_free_before = _device_free(device)
        self.device_free_least = self.device_free_before
        self.process_device_peak: int | None = None
        self.loop: Loop | None = None
        self.loss = math.nan

    def setup(self) -> dict[str, Any]:
        """Build the loop (graphs, sessions, weights on the device, targets): the cell's set-up time."""
        started = time.perf_counter()
        images: dict[str, torch.Tensor] = {}
        if self.recipe.inputs is not None:
            images["content"], images["style"] = demo_pair(*self.recipe.inputs)
        self.loop = resolve_factory(self.recipe.factory)(**self.recipe.kwargs, **images)
        synchronize(self.device)
        seconds = time.perf_counter() - started
        digest = hashlib.sha256()
        for image in images.values():
            digest.update(image.numpy().tobytes())
        return {
            "setup_seconds": seconds,
            "engine": dict(self.loop.describe()),
            "rss_before_bytes": self.rss_before,
            "inputs_sha256": digest.hexdigest() if images else "",
        }

    def _step(self) -> float:
        assert self.loop is not None, "setup() first"
        self.loss = self.loop.step()
        return self.loss

    def first_iteration(self) -> tuple[float, float]:
        """(seconds, loss) of the first step, which pays for lazy initialisation and so is reported apart."""
        started = time.perf_counter()
        loss = self._step()
        synchronize(self.device)
        return time.perf_counter() - started, loss

    def warm_up(self, count: int) -> float | None:
        """``count`` untimed steps; the last one's seconds (None for none), which sizes the windows."""
        seconds = None
        for _ in range(count):
            started = time.perf_counter()
            self._step()
            synchronize(self.device)
            seconds = time.perf_counter() - started
        self._note_device_memory()
        return seconds

    def window(self, count: int, round_index: int) -> tuple[Window, list[float], float]:
        """``count`` timed steps closed by a device synchronisation: (window, per-step seconds, last loss)."""
        assert self.loop is not None, "setup() first"
        steps = []
        engine_before = self.loop.engine_seconds
        synchronize(self.device)
        before = CpuSnapshot.take(self.cpus)
        for _ in range(count):
            tick = time.perf_counter()
            self._step()
            steps.append(time.perf_counter() - tick)
        synchronize(self.device)
        after = CpuSnapshot.take(self.cpus)
        load = WindowLoad.between(before, after)
        self._note_device_memory()
        window = Window(
            count, after.wall - before.wall, self.loop.engine_seconds - engine_before, round_index,
            load.cpu_seconds, load.busy_seconds, load.steal_seconds, load.load_average, len(self.cpus),
        )
        return window, steps, self.loss

    def _note_device_memory(self) -> None:
        free = _device_free(self.device)
        if free is not None and self.device_free_least is not None:
            self.device_free_least = min(self.device_free_least, free)
        mine = process_device_bytes(self.device)
        if mine is not None:
            self.process_device_peak = max(self.process_device_peak or 0, mine)

    def finish(self) -> dict[str, Any]:
        """What the worker used: peak RSS, device memory, and the threads each library ran with."""
        engine = self.loop.describe() if self.loop is not None else {}
        counts: dict[str, Any] = {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            "process": psutil.Process().num_threads(),
        }
        if engine.get("engine") == "onnxruntime":
            counts["onnxruntime_intra_op"] = engine.get("threads")
        for variable in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"):
            if variable in os.environ:
                counts[variable] = os.environ[variable]
        used, source = self.process_device_peak, "nvml: this process"
        if used is None and self.device_free_before is not None and self.device_free_least is not None:
            used, source = self.device_free_before - self.device_free_least, "mem_get_info: device-wide delta"
        return {
            "peak_rss_bytes": _peak_resident_bytes(),
            "device_peak_bytes": int(torch.cuda.max_memory_allocated()) if self.device.startswith("cuda") else None,
            "device_used_bytes": used,
            "device_memory_source": source if used is not None else None,
            "thread_counts": counts,
        }


def process_device_bytes(device: str) -> int | None:
    """GPU memory this process holds, by NVML (torch's allocator and ORT's arena alike), or None without NVML.

    NVML cannot see the process where the container hides host PIDs; then the device-wide delta stands in.
    """
    if not device.startswith("cuda"):
        return None
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return int(process.usedGpuMemory)
    except pynvml.NVMLError:
        return None
    return None


def _device_free(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info()
    return int(free)
