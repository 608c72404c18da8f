"""Exact tiled loss and gradient with the tiles computed on a Ray cluster.

One tile worker (a Ray actor) per node holds an engine with its sessions for the whole run. Per
iteration only three things cross the network: each tile's pixels (to a worker, once per pass), the
whole-image Gram directions (once per gradient pass, through the object store) and each tile's Gram
sums and gradient (back). The content targets go to each worker once per run. The driver sums the
results in tile order, so the loss and gradient are those of the local tiled run; a worker that dies
has its tiles rerun on the others, and the iteration completes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from onnxstyle.cluster import NodeInfo, is_lost, require_ray
from onnxstyle.engines.base import EngineSpec
from onnxstyle.engines.tiled import TiledEngine, TileGradient, TileStatistics
from onnxstyle.errors import UsageError, WorkerError
from onnxstyle.ort_providers import CUDA_TARGETS
from onnxstyle.tiling import Tile, content_crops, layer_strides


# How long a tile worker may take to start (import, engine, sessions) before its node is reported as busy.
START_TIMEOUT = 300.0
# Workers a single tile may lose before it is taken for the cause (a tile that kills every worker it meets).
MAX_RERUNS = 2


def _arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy() for name, value in tensors.items()}


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value) for name, value in arrays.items()}  # a copy: object-store arrays are read-only


def node_weights(spec: EngineSpec) -> EngineSpec:
    """The driver's weights, found on this node: the driver's file path need not exist on another machine.

    Looked up by catalogue id (no download) and accepted only with the driver's sha256, so every node
    computes with the same numbers.
    """
    import socket
    from dataclasses import replace

    from onnxstyle.errors import OnnxstyleError, WeightsError, first_line
    from onnxstyle.weights import resolve

    weights = spec.weights
    if weights.path is None or weights.path.exists():
        return spec
    host = socket.gethostname()
    try:
        found = resolve(weights.id, spec.backbone, allow_download=False)
    except OnnxstyleError as error:
        raise WeightsError(f"node {host} has no {weights.id} weights ({first_line(error)}); install them on every node") from None
    if found.sha256 != weights.sha256:
        raise WeightsError(f"node {host} has other {weights.id} weights (sha256 {found.sha256}, the driver's {weights.sha256})")
    return replace(spec, weights=found)


class TileWorker:
    """Inside a Ray actor on one node: a tile backend built once, driven tile by tile."""

    def __init__(self, engine: str, spec: EngineSpec, provider: str, threads: int, precision: str, sizes: list[tuple[int, int]]) -> None:
        from onnxstyle.engines import create_tile_backend

        torch.set_num_threads(threads)
        spec = node_weights(spec)
        self.backend = create_tile_backend(engine, spec, provider=provider, threads=threads, sizes=sizes, precision=precision)
        self.strides = layer_strides(spec.backbone, spec.layers)
        self.content: dict[str, torch.Tensor] = {}
        self.busy_seconds = 0.0

    def ready(self) -> dict[str, object]:
        return dict(self.backend.describe())

    def set_content(self, content: dict[str, np.ndarray]) -> None:
        device = self.backend.device
        self.content = {layer: value.to(device) for layer, value in _tensors(content).items()}

    def statistics(self, tile: Tile, pixels: np.ndarray, with_content: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
        started = time.perf_counter()
        device = self.backend.device
        sums, features = self.backend.tile_statistics(torch.tensor(pixels, device=device), tile.core_mask(device), self.strides)  # type: ignore[attr-defined]
        seconds = time.perf_counter() - started
        self.busy_seconds += seconds
        return _arrays(sums), _arrays(features) if with_content else {}, seconds

    def gradient(
        self, tile: Tile, pixels: np.ndarray, directions: dict[str, np.ndarray], scales: dict[str, float]
    ) -> tuple[dict[str, float], np.ndarray, float]:
        started = time.perf_counter()
        device = self.backend.device
        crops = content_crops(self.content, tile, self.strides, self.backend.spec.backbone)
        parts, grad = self.backend.tile_gradient(  # type: ignore[attr-defined]
            torch.tensor(pixels, device=device), tile.core_mask(device), self.strides,
            {name: value.to(device) for name, value in _tensors(directions).items()}, crops, scales,
        )
        seconds = time.perf_counter() - started
        self.busy_seconds += seconds
        return parts, grad.detach().cpu().numpy(), seconds


@dataclass
class Worker:
    node: NodeInfo
    actor: Any
    threads: int


@dataclass
class PassTimes:
    """Where one pass's wall time went: compute on the workers, and the rest (dispatch, transfer, reduce)."""

    wall: float = 0.0
    compute: float = 0.0
    reduce: float = 0.0
    rerun: int = 0
    lost: list[str] = field(default_factory=list)


class RayTiles:
    """A ``TileExecutor`` whose tiles run on tile workers, one per node, at most two tiles in flight per worker."""

    def __init__(
        self, nodes: list[NodeInfo], *, engine: str, spec: EngineSpec, provider: str, precision: str, sizes: list[tuple[int, int]],
        threads: int | None = None,
    ) -> None:
        ray = require_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(max_restarts=0)(TileWorker)
        self.spec = spec
        self.workers: list[Worker] = []
        on_gpu = provider.lower().startswith(CUDA_TARGETS)
        usable = [node for node in nodes if node.cpus > 0 and (node.gpus > 0 or not on_gpu)]
        if not usable:
            raise UsageError(f"no node of the cluster has a GPU for provider {provider}; nodes: {', '.join(node.label for node in nodes)}")
        for node in usable:
            count = threads or max(1, node.cpus)
            actor = remote.options(
                num_cpus=min(count, max(1, node.cpus)), num_gpus=1 if on_gpu else 0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            ).remote(engine, spec, provider, count, precision, sizes)
            self.workers.append(Worker(node, actor, count))
        self.engines = []
        for worker in self.workers:
            try:
                self.engines.append(ray.get(worker.actor.ready.remote(), timeout=START_TIMEOUT))
            except ray.exceptions.GetTimeoutError:
                self.close()
                raise WorkerError(
                    f"the tile worker on {worker.node.label} did not start within {START_TIMEOUT:.0f} s "
                    f"(its {worker.threads} CPUs{' and a GPU' if on_gpu else ''} are held by something else?)"
                ) from None
            except ray.exceptions.RayActorError as error:
                self.close()
                cause = str(error.__cause__ or error).strip().splitlines()
                raise WorkerError(f"the tile worker on {worker.node.label} failed to start: {cause[-1] if cause else type(error).__name__}") from None
        self.content_ref: Any = None
        self.lost: list[str] = []
        self.last: dict[str, PassTimes] = {}

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self) -> dict[str, object]:
        return {
            "workers": [{"node": worker.node.label, "threads": worker.threads} for worker in self.workers],
            "engine": self.engines[0] if self.engines else {},
            "lost": list(self.lost),
        }

    def set_content(self, content: dict[str, torch.Tensor]) -> None:
        ray = require_ray()
        self.content_ref = ray.put(_arrays(content))
        self._on_all(lambda worker: worker.actor.set_content.remote(self.content_ref))

    def _on_all(self, call: Any) -> None:
        """``call(worker)`` on every worker; a worker that is gone is dropped, not fatal."""
        ray = require_ray()
        for worker in list(self.workers):
            try:
                ray.get(call(worker))
            except Exception as error:
                if not is_lost(error):
                    raise
                self._drop(worker, error)

    def _drop(self, worker: Worker, error: BaseException) -> None:
        """Stop using ``worker`` (and kill it: an unreachable actor may still hold its node's CPUs or GPU)."""
        ray = require_ray()
        if worker in self.workers:
            self.workers.remove(worker)
            self.lost.append(f"{worker.node.label}: {type(error).__name__}")
            try:
                ray.kill(worker.actor)
            except Exception:  # already gone with its node
                pass
        if not self.workers:
            raise WorkerError(f"every tile worker is gone (last: {worker.node.label}, {type(error).__name__}); the iteration cannot finish")

    def _map(self, kind: str, jobs: list[tuple[Tile, torch.Tensor]], *extra: Any) -> Iterator[Any]:
        """Keep two jobs in flight per worker, each next job to the least busy worker; rerun a lost worker's jobs
        elsewhere (a job that has lost ``MAX_RERUNS`` workers is the cause, not the victim); yield in job order."""
        ray = require_ray()
        times = PassTimes()
        started = time.perf_counter()
        pending: dict[Any, tuple[int, Worker]] = {}
        done: dict[int, Any] = {}
        queue = list(range(len(jobs)))
        pixels: dict[int, Any] = {}
        reruns: dict[int, int] = {}
        yielded = 0

        def submit(index: int) -> None:
            load = {id(worker): 0 for worker in self.workers}
            for _, busy in pending.values():
                if id(busy) in load:
                    load[id(busy)] += 1
            worker = min(self.workers, key=lambda candidate: load[id(candidate)])
            if index not in pixels:
                pixels[index] = np.ascontiguousarray(jobs[index][1].detach().cpu().numpy())
            pending[getattr(worker.actor, kind).remote(jobs[index][0], pixels[index], *extra)] = (index, worker)

        while queue or pending:
            while queue and len(pending) < 2 * len(self.workers):
                submit(queue.pop(0))
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, worker = pending.pop(ready[0])
            try:
                *result, seconds = ray.get(ready[0])
            except Exception as error:
                if not is_lost(error):
                    raise
                reruns[index] = reruns.get(index, 0) + 1
                if reruns[index] > MAX_RERUNS:
                    raise WorkerError(
                        f"tile {index} of the {kind} pass lost {reruns[index]} workers in a row (last on {worker.node.label}: "
                        f"{type(error).__name__}); it is the likely cause (out of memory?), so it is not rerun again"
                    ) from None
                self._drop(worker, error)
                times.rerun += 1
                times.lost.append(worker.node.label)
                queue.insert(0, index)
                continue
            times.compute += seconds
            done[index] = tuple(result)
            pixels.pop(index, None)
            while yielded in done:
                reduce_started = time.perf_counter()
                yield done.pop(yielded)
                times.reduce += time.perf_counter() - reduce_started
                yielded += 1
        times.wall = time.perf_counter() - started
        self.last[kind] = times

    def statistics(self, jobs: list[tuple[Tile, torch.Tensor]], with_content: bool) -> Iterator[TileStatistics]:
        for sums, features in self._map("statistics", jobs, with_content):
            yield _tensors(sums), _tensors(features)

    def gradients(
        self, jobs: list[tuple[Tile, torch.Tensor]], directions: dict[str, torch.Tensor], content_scales: dict[str, float]
    ) -> Iterator[TileGradient]:
        ray = require_ray()
        directions_ref = ray.put(_arrays(directions))
        for parts, grad in self._map("gradient", jobs, directions_ref, content_scales):
            yield parts, torch.from_numpy(grad.copy())

    def close(self) -> None:
        ray = require_ray()
        for worker in self.workers:
            try:
                ray.kill(worker.actor)
            except Exception:  # gone with its node
                pass
        self.workers.clear()


class DriverBackend:
    """What the driver's ``TiledEngine`` needs of a backend when the tiles run elsewhere: the spec and a device."""

    def __init__(self, spec: EngineSpec, executor: RayTiles) -> None:
        self.spec = spec
        self.executor = executor

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def describe(self) -> dict[str, object]:
        return dict(self.executor.engines[0]) if self.executor.engines else {}

    def tile_statistics(self, tile: torch.Tensor, core: torch.Tensor, strides: dict[str, int]) -> TileStatistics:
        raise NotImplementedError("the cluster's tile workers compute the tiles")

    def tile_gradient(self, *args: Any) -> TileGradient:
        raise NotImplementedError("the cluster's tile workers compute the tiles")


class ClusterTiledEngine(TiledEngine):
    """A ``TiledEngine`` whose tiles run on a Ray cluster; everything else (sums, loss, TV) stays here."""

    name = "cluster-tiled"

    def __init__(self, spec: EngineSpec, core: int, executor: RayTiles) -> None:
        super().__init__(DriverBackend(spec, executor), core, executor)  # type: ignore[arg-type]
        self.cluster = executor


def cluster_engine(
    engine: str, spec: EngineSpec, *, address: str, core: int, provider: str = "cpu", precision: str = "fp32",
    sizes: list[tuple[int, int]] | None = None, threads: int | None = None,
) -> ClusterTiledEngine:
    """Connect to ``address`` and start one tile worker per live node (``threads`` each, default: the node's CPUs)."""
    from onnxstyle.cluster import connect

    nodes = connect(address)
    executor = RayTiles(nodes, engine=engine, spec=spec, provider=provider, precision=precision, sizes=sizes or [], threads=threads)
    return ClusterTiledEngine(spec, core, executor)
