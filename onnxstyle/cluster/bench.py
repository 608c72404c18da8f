"""``bench --cluster``: every node measures the requested cells it can run, by the local method, into one report.

Each node runs one bench task that takes all of its CPUs and GPUs, so a cell is timed alone on its node
(nodes run in parallel with each other, which is what a sweep across machines is for). Inside the task
the node runs the same ``run_bench`` as a local bench: isolated worker processes, warm-up, interleaved
windows among its runners. Finished cells stream back through a Ray queue and the report is rewritten
after each. A node that dies marks its unfinished cells failed with the reason; a cell no node can run
is listed once, with each node's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from onnxstyle.bench.records import Cell, GemmRate
from onnxstyle.cluster import NodeInfo, connect, error_line, gather, is_lost, require_ray
from onnxstyle.errors import WorkerError

# bench_options' keyword arguments that travel to the nodes as text: each node decides for itself what it can run.
BenchRequest = dict[str, Any]


def _plan_on_node(request: BenchRequest) -> dict[str, Any]:
    """Runs on a node: which (runner, precision) pairs of the request work there, and why the others do not.

    Unlike a local bench, an explicitly requested runner that this node lacks (a GPU provider on a CPU
    box) is not an error: another node may have it.
    """
    from onnxstyle.bench.options import parse_precisions
    from onnxstyle.runners import parse_runner, precision_support, runner_status, select_runners

    text = request.get("provider")
    if text is None or text.strip().lower() == "all":
        usable, skipped = select_runners(text)  # no option: what works here, silently; "all": the rest with why
        reasons = {runner.label: reason for runner, reason in skipped.items()}
    else:
        usable, reasons = [], {}
        for runner in dict.fromkeys(parse_runner(item) for item in text.split(",")):
            reason = runner_status(runner)
            if reason is None:
                usable.append(runner)
            else:
                reasons[runner.label] = reason
    runs, skipped_pairs = [], {}
    for precision in parse_precisions(request["precision"]):
        for runner in usable:
            why = precision_support(runner, precision)
            if why is None:
                runs.append((runner.label, precision))
            else:
                skipped_pairs[f"{runner.label} {precision}"] = why
        for label, reason in reasons.items():
            skipped_pairs[f"{label} {precision}"] = reason
    return {"runs": runs, "skipped": skipped_pairs}


def _bench_on_node(request: BenchRequest, node: str, runs: list[tuple[str, str]], queue: Any) -> dict[str, Any]:
    """Runs on a node: the local bench over the runners and precisions it can run, each finished cell put on
    ``queue``; returns every cell, its roofs and its fingerprint."""
    from onnxstyle.bench.options import bench_options
    from onnxstyle.bench.run import run_bench
    from onnxstyle.sysinfo import fingerprint

    runners = ",".join(dict.fromkeys(label for label, _ in runs))
    precisions = ",".join(dict.fromkeys(precision for _, precision in runs))
    options = bench_options(**{**request, "provider": runners, "precision": precisions})

    def on_cell(cell: Cell, run: Any) -> None:
        queue.put((node, asdict(cell)))

    cells, roofs, interrupted = run_bench(options, on_cell=on_cell)
    return {
        "cells": [asdict(cell) for cell in cells],
        "roofs": {device: asdict(rate) for device, rate in roofs.items()},
        "fingerprint": fingerprint(),
        "interrupted": interrupted,
    }


@dataclass
class ClusterRun:
    """A cluster bench as it stands: cells from every node, roofs and fingerprints by node, and what was lost."""

    cells: list[Cell] = field(default_factory=list)
    roofs: dict[str, GemmRate] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False


def _cell(raw: dict[str, Any], node: str) -> Cell:
    known = {item.name for item in fields(Cell)}
    return replace(Cell(**{key: value for key, value in raw.items() if key in known}), node=node)


def plan_cells(plans: dict[str, dict[str, Any]], grid: list[tuple[str, int, int]]) -> tuple[dict[str, list[Cell]], list[Cell]]:
    """(the cells each node will run, the cells no node can run, each with every node's reason).

    ``grid`` is (model, width, height); a node's plan lists the (runner, precision) pairs it can run.
    """
    planned = {
        node: [Cell(runner, model, width, height, precision, node=node) for runner, precision in plan["runs"] for model, width, height in grid]
        for node, plan in plans.items()
    }
    pairs = list(dict.fromkeys([*(f"{r} {p}" for plan in plans.values() for r, p in plan["runs"]), *(key for plan in plans.values() for key in plan["skipped"])]))
    unrunnable = []
    for pair in pairs:
        if any(f"{runner} {precision}" == pair for plan in plans.values() for runner, precision in plan["runs"]):
            continue
        runner, precision = pair.rsplit(" ", 1)
        reasons = "; ".join(f"{node}: {plan['skipped'].get(pair, 'not asked')}" for node, plan in plans.items())
        unrunnable += [Cell(runner, model, width, height, precision, status="skipped", reason=f"no node can run it ({reasons})") for model, width, height in grid]
    return planned, unrunnable


def run_cluster_bench(
    request: BenchRequest, grid: list[tuple[str, int, int]], *, address: str, on_change: Callable[[ClusterRun], None] | None = None,
    poll_seconds: float = 0.5,
) -> ClusterRun:
    """Measure on every node; ``on_change`` hears the run after each cell and each node's end (to rewrite the report).

    ``grid`` is (model, width, height) for every cell a runner would run. Ctrl-C cancels the
    nodes' tasks (their worker processes die with them) and keeps every finished cell.
    """
    ray = require_ray()
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = connect(address)
    labels = {node.node_id: node.label for node in nodes}
    run = ClusterRun(nodes={labels[node.node_id]: {"node_id": node.node_id, "address": node.address, "cpus": node.cpus, "gpus": node.gpus} for node in nodes})

    def pinned(node: NodeInfo, **resources: Any) -> dict[str, Any]:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False), **resources}

    planner = ray.remote(num_cpus=0)(_plan_on_node)
    for node in nodes:
        if node.cpus == 0:
            run.nodes[labels[node.node_id]]["skipped"] = "has no CPUs for a bench task"
    nodes = [node for node in nodes if node.cpus > 0]
    plans, failures = gather({labels[node.node_id]: planner.options(**pinned(node)).remote(request) for node in nodes}, timeout=120.0)
    for label, failure in failures.items():
        run.nodes[label]["lost"] = f"could not be asked what it can run ({failure})"
    nodes = [node for node in nodes if labels[node.node_id] in plans]
    planned, unrunnable = plan_cells(plans, grid)
    run.cells.extend(unrunnable)
    # The queue lives on the driver's node, which outlives any node it hears from.
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)})
    bench = ray.remote(max_retries=0)(_bench_on_node)
    tasks = {}
    for node in nodes:
        label = labels[node.node_id]
        if planned[label]:
            options = pinned(node, num_cpus=max(1, node.cpus), num_gpus=node.gpus)
            tasks[bench.options(**options).remote(request, label, plans[label]["runs"], queue)] = label
    finished: dict[tuple[str, str, int, int, str], Cell] = {}

    def drain() -> None:
        while True:
            try:
                node, raw = queue.get_nowait()
            except Empty:
                return
            cell = _cell(raw, node)
            finished[cell.key] = cell
            run.cells.append(cell)
            if on_change is not None:
                on_change(run)

    try:
        while tasks:
            ready, _ = ray.wait(list(tasks), num_returns=1, timeout=poll_seconds)
            drain()
            for ref in ready:
                label = tasks.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as error:
                    drain()
                    what = "was lost" if is_lost(error) else "failed"
                    _fail_unfinished(run, planned[label], finished, f"node {label} {what} ({error_line(error)[:200]})")
                else:
                    drain()
                    for raw in result["cells"]:  # cells the node's planner skipped never reach on_cell
                        cell = _cell(raw, label)
                        if cell.key not in finished:
                            finished[cell.key] = cell
                            run.cells.append(cell)
                    run.nodes[label]["fingerprint"] = result["fingerprint"]
                    for device, rate in result["roofs"].items():
                        run.roofs[f"{device}@{label}"] = GemmRate(**rate)
                    run.interrupted |= result["interrupted"]
                    _fail_unfinished(run, planned[label], finished, f"node {label} finished without measuring it")
                if on_change is not None:
                    on_change(run)
    except KeyboardInterrupt:
        run.interrupted = True
        for ref in tasks:
            ray.cancel(ref, force=True)
        drain()
        for label in tasks.values():
            for cell in planned[label]:
                if cell.key not in finished:
                    run.cells.append(replace(cell, status="interrupted", reason="Ctrl-C stopped the cluster bench"))
    finally:
        queue.shutdown()
    return run


def _fail_unfinished(run: ClusterRun, planned: list[Cell], finished: dict[tuple[str, str, int, int, str], Cell], reason: str) -> None:
    for cell in planned:
        if cell.key not in finished:
            run.cells.append(replace(cell, status="failed", reason=reason, error_code=WorkerError.exit_code))
            finished[cell.key] = run.cells[-1]


__all__ = ["ClusterRun", "run_cluster_bench"]
