"""``cluster-scale``'s results model and its files: the speed-up table over node counts and Ray's measured overhead.

Plain data, without torch, so the report reads anywhere; ``cluster/scale.py`` measures and fills it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxstyle.report.checks import Problem, build, check_schema, damaged
from onnxstyle.report.formats import FileContent
from onnxstyle.report.parity import legacy_schema

SCHEMA = "onnxstyle.scale"
SCHEMA_VERSION = 1
LEGACY_KIND = "cluster-scale"

@dataclass(frozen=True)
class TileTraffic:
    """Bytes one tile moves per iteration, both passes, in fp32."""

    pixels_in: int  # the tile's pixels, sent for the Gram pass and again for the gradient pass
    gram_sums_out: int  # its Gram sums over the core, per style layer
    gradient_out: int  # d(loss)/d(its pixels), halo included (neighbours' halos overlap and add)
    directions_in: int  # the whole-image dL/dG, once per node per iteration (not per tile)

    @property
    def per_tile(self) -> int:
        return self.pixels_in + self.gram_sums_out + self.gradient_out


@dataclass
class ScaleRow:
    nodes: int
    waves: int
    compute_seconds: float
    network_seconds: float
    driver_seconds: float
    iteration_seconds: float
    speedup: float


@dataclass
class ScaleTable:
    """The speed-up model at one image size, with the measured inputs it rests on."""

    width: int
    height: int
    core: int
    tiles: int
    tile_rows: int
    tile_cols: int
    traffic: TileTraffic
    tile_gflop: float
    tile_seconds: float  # both passes of one tile, measured here
    driver_seconds: float  # the driver's per-iteration work at this size (sums, TV, optimiser), measured or scaled
    network_gbit: float
    cpu: str
    rows: list[ScaleRow] = field(default_factory=list)


@dataclass
class Overhead:
    """One iteration at ``size`` px with ``core``-px tiles: in this process, and on a local Ray cluster."""

    size: int
    core: int
    tiles: int
    workers: int
    threads: int
    local_seconds: float  # the same tiles, same engine and threads, in this process, before Ray starts
    local_beside_ray_seconds: float  # median of the local iterations alternated with the cluster's (Ray's processes up)
    cluster_seconds: float  # median of the cluster iterations alternated with the local ones
    paired_ratio: float  # median over rounds of cluster / local, each round's two iterations back to back
    dispatch_seconds: float  # a no-op actor call per task, timed alone, times the tasks of an iteration
    serialisation_seconds: float  # putting and getting the iteration's payloads through the object store
    reduce_seconds: float  # the driver's sums over the tiles' results

    def share(self, seconds: float) -> float:
        return seconds / self.cluster_seconds


def scale_markdown(table: ScaleTable, overhead: Overhead | None) -> str:
    traffic = table.traffic
    lines = [
        f"# Tiled stylization over N nodes: {table.width}×{table.height}, VGG19, {table.core}-px cores",
        "",
        f"{table.tiles} tiles of up to {table.tile_cols}×{table.tile_rows} px (core + halo). Per tile and iteration: "
        f"{traffic.pixels_in / 2**20:.1f} MiB of pixels in (both passes), {traffic.gram_sums_out / 2**20:.2f} MiB of Gram sums out, "
        f"{traffic.gradient_out / 2**20:.1f} MiB of gradient out — {traffic.per_tile / 2**20:.1f} MiB in all; the whole-image "
        f"dL/dG ({traffic.directions_in / 2**20:.2f} MiB) goes to each node once per iteration.",
        f"Compute per tile: {table.tile_gflop:.0f} GFLOP (both passes), measured {table.tile_seconds:.1f} s here ({table.cpu}).",
        f"Model: waves of N tiles, every tile's bytes over a {table.network_gbit:g} Gbit/s link at the driver, plus the driver's "
        f"own {table.driver_seconds:.1f} s (Gram sums, TV, the optimiser step) per iteration.",
        "",
        "| nodes | waves | compute s | network s | driver s | s / iteration | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        lines.append(
            f"| {row.nodes} | {row.waves} | {row.compute_seconds:,.1f} | {row.network_seconds:,.1f} | {row.driver_seconds:,.1f} | "
            f"{row.iteration_seconds:,.1f} | {row.speedup:.1f}× |"
        )
    lines += ["", "GPU nodes: no GPU report is committed yet (no session has had a GPU), so the model has no GPU row."]
    if overhead is not None:
        o = overhead
        ray_total = (o.paired_ratio - 1) * o.local_beside_ray_seconds
        mechanics = o.dispatch_seconds + o.serialisation_seconds
        lines += [
            "",
            f"## Ray's overhead, measured: {o.size}×{o.size}, {o.core}-px cores ({o.tiles} tiles), one tile worker with {o.threads} threads, local cluster",
            "",
            "The same tiles, engine and threads in this process and on the cluster, in alternating rounds (this machine drifts",
            "±10% over minutes); each part below is also timed alone.",
            "",
            "| part | seconds / iteration | share of an iteration |",
            "|---|---|---|",
            f"| iteration in this process, before Ray started | {o.local_seconds:.2f} | – |",
            f"| iteration in this process, alternated with the cluster's (median) | {o.local_beside_ray_seconds:.2f} | – |",
            f"| iteration on the cluster (median) | {o.cluster_seconds:.2f} | 100% |",
            f"| all that Ray adds: median of the rounds' cluster/local, {o.paired_ratio:.3f} | {ray_total:.2f} | {100 * (1 - 1 / o.paired_ratio):.1f}% |",
            f"| dispatch ({2 * o.tiles} actor calls) | {o.dispatch_seconds:.3f} | {100 * o.share(o.dispatch_seconds):.2f}% |",
            f"| serialisation (the iteration's payloads through the object store) | {o.serialisation_seconds:.3f} | {100 * o.share(o.serialisation_seconds):.2f}% |",
            f"| reduce (the driver's sums over the tiles, as the local run also does them) | {o.reduce_seconds:.3f} | {100 * o.share(o.reduce_seconds):.2f}% |",
            f"| the rest (the tile worker's own process and Ray's beside it, waiting) | {ray_total - mechanics - o.reduce_seconds:.2f} | "
            f"{100 * o.share(ray_total - mechanics - o.reduce_seconds):.1f}% |",
            "",
            f"Ray's own task path (dispatch + serialisation) costs {100 * o.share(mechanics):.2f}% of an iteration, the reduce "
            f"{100 * o.share(o.reduce_seconds):.2f}% more (target ≤ 5% each). "
            "The whole difference is within this machine's drift; when it is negative, the in-process run was the slower one: "
            "the driver process shares its CPUs with Ray's threads in it, while the tile worker computes in a process of its own.",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class ScaleReport:
    """A cluster-scale run as saved: the speed-up table and, when it was measured, Ray's overhead."""

    table: ScaleTable
    overhead: Overhead | None = None

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> ScaleReport:
        where = source or "report"
        check_schema(legacy_schema(data, LEGACY_KIND, SCHEMA), where, SCHEMA, SCHEMA_VERSION, "cluster-scale")
        try:
            return build(cls, {"table": data.get("scale"), "overhead": data.get("overhead")}, "the report")
        except Problem as problem:
            raise damaged(where, problem) from None

    def to_markdown(self) -> str:
        return scale_markdown(self.table, self.overhead)


def as_json(table: ScaleTable, overhead: Overhead | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": LEGACY_KIND, "scale": asdict(table),
        "overhead": asdict(overhead) if overhead is not None else None,
    }


def scale_files(table: ScaleTable, overhead: Overhead | None) -> dict[str, FileContent]:
    """JSON and Markdown, by suffix, for ``ReportWriter.write_files``."""
    return {"json": json.dumps(as_json(table, overhead), indent=1) + "\n", "md": scale_markdown(table, overhead)}
