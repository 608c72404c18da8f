"""How far tiled stylization scales over nodes: traffic and compute per tile, a speed-up model, and Ray's overhead.

The model is deliberately simple and every input is stated: each node computes whole tiles (the tiles of a
pass go out in waves of N), each pass ends with the driver summing in tile order, and the network moves
the bytes ``tile_traffic`` counts. The per-tile seconds and the driver's own work are measured on this
machine; Ray's overhead is measured on a local cluster as the difference against the same tiles run in
this process, then split into dispatch, serialisation and the reduce.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onnxstyle import defaults
from onnxstyle.engines.base import EngineSpec
from onnxstyle.errors import UsageError
from onnxstyle.report.scale import Overhead, ScaleRow, ScaleTable, TileTraffic
from onnxstyle.tiling import Span, Tile, TilePlan, check_tile, content_crops, layer_strides

NETWORK_GBIT = 10.0  # the model's assumed link per node (a common datacentre NIC), stated in every table
NODE_COUNTS = (1, 4, 16, 64)
DRIVER_COPIES = 6  # whole-image fp32 tensors the driver holds: image, pixels, gradient, Adam's two moments, TV's work


def tile_traffic(spec: EngineSpec, rows: int, cols: int) -> TileTraffic:
    channels = [spec.backbone.feature_shape(layer, 64, 64) for layer in spec.style_layers]
    grams = sum(4 * shape[0] ** 2 for shape in channels if shape is not None)
    pixels = 4 * 3 * rows * cols
    return TileTraffic(pixels_in=2 * pixels, gram_sums_out=grams, gradient_out=pixels, directions_in=grams)


def speedup_rows(tiles: int, tile_seconds: float, per_tile_bytes: int, directions_bytes: int, driver_seconds: float, network_gbit: float) -> list[ScaleRow]:
    """Iteration time on N nodes: waves of N tiles, each node's bytes over its link, and the driver's serial part.

    One node has no network (it is the local tiled run); the driver's link carries every tile's bytes, so it
    is the bound that grows with N.
    """
    rows = []
    single = tiles * tile_seconds + driver_seconds
    for nodes in NODE_COUNTS:
        waves = math.ceil(tiles / nodes)
        compute = waves * tile_seconds
        network = 0.0 if nodes == 1 else (tiles * per_tile_bytes + nodes * directions_bytes) * 8 / (network_gbit * 1e9)
        total = compute + network + driver_seconds
        rows.append(ScaleRow(nodes, waves, compute, network, driver_seconds, total, single / total))
    return rows


def check_request(spec: EngineSpec, width: int, height: int, core: int, overhead_size: int, available: int) -> None:
    """Refuse, before any measurement, what ``cluster-scale`` could not measure: sizes below the backbone's
    minimum, a tile below its receptive field, and work that would not fit in ``available`` bytes."""
    from onnxstyle.memory import estimate_bytes

    backbone, layers = spec.backbone, spec.layers
    if core <= 0:
        raise UsageError(f"--tile must be positive, got {core}")
    check_tile(backbone, layers, core)
    if (problem := backbone.size_problem(layers, width, height)) is not None:
        raise UsageError(f"--size {problem}")
    if overhead_size < 0:
        raise UsageError(f"--overhead-size must be a square size in px, or 0 to skip the overhead, got {overhead_size}")
    if overhead_size and (problem := backbone.size_problem(layers, overhead_size, overhead_size)) is not None:
        raise UsageError(f"--overhead-size {problem}")

    def need(side_width: int, side_height: int, copies: int) -> int:
        """``copies`` tiles' engines at once (each with its sessions) and the driver's whole-image tensors."""
        rows, cols = TilePlan.create(backbone, layers, side_height, side_width, core).largest_tile
        return copies * estimate_bytes("onnxruntime", backbone, layers, cols, rows) + DRIVER_COPIES * 3 * 4 * side_width * side_height

    # the overhead runs the same tiles in this process and in a tile worker beside it
    for option, (side_width, side_height), copies in (("--size", (width, height), 1), ("--overhead-size", (overhead_size, overhead_size), 2)):
        if side_width and (needed := need(side_width, side_height, copies)) > 0.9 * available:
            raise UsageError(f"{option} {side_width}x{side_height} with --tile {core} needs ≈{needed / 2**30:.1f} GB, {available / 2**30:.1f} GB free")


def measure_tile(spec: EngineSpec, rows: int, cols: int, *, engine: str = "onnxruntime", threads: int | None = None, repeats: int = 2) -> float:
    """Seconds for both passes of one tile of ``rows``×``cols`` pixels on this machine (best of ``repeats``)."""
    from onnxstyle.engines import create_tile_backend

    backend: Any = create_tile_backend(engine, spec, threads=threads, sizes=[(rows, cols)])
    tile = Tile(Span(0, rows, 0, rows), Span(0, cols, 0, cols))
    pixels = torch.rand(1, 3, rows, cols, generator=torch.Generator().manual_seed(0))
    strides = layer_strides(spec.backbone, spec.layers)
    core = tile.core_mask(backend.device)
    _, features = backend.tile_statistics(pixels, core, strides)
    content = {layer: features[layer] for layer in spec.content_layers}
    crops = content_crops(content, tile, strides, spec.backbone)
    directions = {layer: torch.zeros(shape[0], shape[0]) for layer in spec.style_layers if (shape := spec.backbone.feature_shape(layer, 64, 64))}
    scales = dict.fromkeys(spec.content_layers, 1.0)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        backend.tile_statistics(pixels, core, strides)
        backend.tile_gradient(pixels, core, strides, directions, crops, scales)
        best = min(best, time.perf_counter() - started)
    return best


def measure_driver(spec: EngineSpec, width: int, height: int) -> float:
    """The driver's own seconds per iteration at ``width``×``height``: total variation and its gradient, and an
    Adam step on the whole image (the Gram sums over tiles are counted in the overhead's reduce)."""
    from onnxstyle.engines.tiled import add_tv_gradient

    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    pixels = image.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=defaults.LEARNING_RATE)
    started = time.perf_counter()
    grad = torch.zeros_like(image)
    add_tv_gradient(image, spec.weights.preprocessing, defaults.TV_WEIGHT, grad)
    pixels.grad = grad
    optimizer.step()
    return time.perf_counter() - started


def scale_table(spec: EngineSpec, width: int, height: int, core: int, tile_seconds: float, driver_seconds: float, cpu: str) -> ScaleTable:
    from onnxstyle.memory import iteration_flops

    plan = TilePlan.create(spec.backbone, spec.layers, height, width, core)
    rows, cols = plan.largest_tile
    traffic = tile_traffic(spec, rows, cols)
    table = ScaleTable(
        width, height, plan.core, plan.count, rows, cols, traffic,
        iteration_flops(spec.backbone, spec.content_layers, spec.style_layers, cols, rows) / 1e9, tile_seconds, driver_seconds, NETWORK_GBIT, cpu,
    )
    table.rows = speedup_rows(plan.count, tile_seconds, traffic.per_tile, traffic.directions_in, driver_seconds, NETWORK_GBIT)
    return table


def measure_overhead(spec: EngineSpec, *, size: int = 2048, core: int = 512, engine: str = "onnxruntime", rounds: int = 3) -> Overhead:
    """Ray's cost per iteration at ``size`` px: one tile worker with all CPUs against the same work in this process.

    With one worker on this machine both runs compute the same tiles on the same cores, so the difference is
    what Ray adds. This machine drifts by ±10% over minutes, more than the difference, so the two are
    timed in alternating rounds (local, cluster) and compared by the median of each round's ratio, as the
    bench pairs its interleaved windows. Dispatch and serialisation are then timed alone, with the
    iteration's own task count and payloads; the reduce is the driver's time in the sums.
    """
    from onnxstyle.cluster import connect, require_ray
    from onnxstyle.cluster.tiles import ClusterTiledEngine, RayTiles
    from onnxstyle.engines import create_engine
    from onnxstyle.images import demo_pair
    from onnxstyle.sysinfo import default_threads

    ray = require_ray()
    threads = default_threads()
    content, style = demo_pair(size, size)
    weights = spec.loss_weights()
    local = create_engine(engine, spec, threads=threads, tile=core, sizes=[(size, size)])
    targets = local.build_targets(content, [style], [1.0], weights)
    local.set_targets(targets)
    image = content.clone()

    def once(run: Any) -> float:
        started = time.perf_counter()
        run.loss_and_grad(image)
        return time.perf_counter() - started

    once(local)  # warm: sessions, arenas
    local_seconds = once(local)
    nodes = connect("local")
    executor = RayTiles(nodes[:1], engine=engine, spec=spec, provider="cpu", precision="fp32", sizes=[(size, size)], threads=threads)
    remote = ClusterTiledEngine(spec, core, executor)
    remote.set_targets(targets)
    try:
        once(remote)
        pairs = [(once(local), once(remote)) for _ in range(rounds)]
        del local
        beside_seconds = statistics.median(pair[0] for pair in pairs)
        cluster_seconds = statistics.median(pair[1] for pair in pairs)
        paired_ratio = statistics.median(pair[1] / pair[0] for pair in pairs)
        passes = executor.last
        tiles = remote.plan(size, size).count
        reduce_seconds = sum(times.reduce for times in passes.values())
        worker = executor.workers[0].actor
        ray.get(worker.ready.remote())
        started = time.perf_counter()
        ray.get([worker.ready.remote() for _ in range(2 * tiles)])
        dispatch_seconds = time.perf_counter() - started
        plan = remote.plan(size, size)
        payloads = [np.zeros((1, 3, tile.rows.stop - tile.rows.start, tile.cols.stop - tile.cols.start), np.float32) for tile in plan.tiles()]
        gram = tile_traffic(spec, *plan.largest_tile).gram_sums_out // 4
        started = time.perf_counter()
        for payload in payloads:
            ray.get(ray.put(payload))  # pixels out, Gram pass
            ray.get(ray.put(payload))  # pixels out, gradient pass
            ray.get(ray.put(payload))  # gradient back
            ray.get(ray.put(np.zeros(gram, np.float32)))  # Gram sums back
        serialisation_seconds = time.perf_counter() - started
    finally:
        executor.close()
    return Overhead(
        size, core, tiles, 1, threads, local_seconds, beside_seconds, cluster_seconds, paired_ratio, dispatch_seconds, serialisation_seconds,
        reduce_seconds,
    )


@dataclass(frozen=True)
class ScaleRequest:
    """What ``cluster-scale`` measures, every option checked before any measurement."""

    spec: EngineSpec
    width: int
    height: int
    core: int
    overhead_size: int  # 0: Ray's overhead is not measured


def scale_request(size: str, *, core: int, overhead_size: int, weights: str) -> ScaleRequest:
    """Parse and check ``cluster-scale``'s options for tiled VGG19 (sizes, tile, memory) before anything runs."""
    from onnxstyle.backbones import get_backbone
    from onnxstyle.bench.options import parse_sizes
    from onnxstyle.memory import free_bytes
    from onnxstyle.weights import resolve

    (width, height), = parse_sizes(size)
    vgg = get_backbone("vgg19")
    spec = EngineSpec.defaults(vgg, resolve(weights, vgg))
    check_request(spec, width, height, core, overhead_size, free_bytes("cpu"))
    return ScaleRequest(spec, width, height, core, overhead_size)


def cluster_scale(request: ScaleRequest, on_stage: Callable[[str], None] = lambda text: None) -> tuple[ScaleTable, Overhead | None]:
    """One tile and the driver timed here, the modelled table over node counts, then (unless 0) Ray's measured overhead.

    ``on_stage`` hears what is being measured, for a status line."""
    from onnxstyle.sysinfo import fingerprint

    spec, width, height, core = request.spec, request.width, request.height, request.core
    rows, cols = TilePlan.create(spec.backbone, spec.layers, height, width, core).largest_tile
    on_stage(f"timing one {cols}x{rows} tile and the driver's work at {width}x{height}…")
    tile_seconds = measure_tile(spec, rows, cols)
    driver_seconds = measure_driver(spec, width, height)
    table = scale_table(spec, width, height, core, tile_seconds, driver_seconds, str(fingerprint()["cpu"]))
    overhead = None
    if request.overhead_size:
        on_stage(f"measuring Ray's overhead at {request.overhead_size} px on a local cluster…")
        overhead = measure_overhead(spec, size=request.overhead_size, core=core)
    return table, overhead
