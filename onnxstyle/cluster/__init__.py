"""Many machines, through Ray: a benchmark sweep placed on the nodes that can run each cell, and exact tiled
stylization whose tiles are computed by workers on every node.

Ray is an optional extra (``pip install 'onnxstyle[cluster]'``); nothing here imports it before a
``--cluster`` option asks for it. ``connect`` is the one door: it checks the address, the nodes and their
onnxstyle versions, and returns what the cluster is made of.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from onnxstyle.errors import UsageError, WorkerError

INSTALL_HINT = "pip install 'onnxstyle[cluster]' (Ray)"
CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodeInfo:
    """One node as the cluster reports it, and as a probe task on it describes itself."""

    node_id: str
    address: str
    cpus: int
    gpus: int
    resources: dict[str, float] = field(default_factory=dict)
    hostname: str = ""
    cpu_model: str = ""
    gpu_names: tuple[str, ...] = ()
    onnxstyle: str = ""
    label: str = ""  # the node's name in tables and messages: its host, with its id's start where hosts repeat (``connect``)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", f"{self.hostname or self.address}-{self.node_id[:6]}")


def require_ray() -> Any:
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _describe_node() -> dict[str, Any]:
    """Runs on each node: who it is and which onnxstyle it has (mixed versions would compute different things)."""
    from onnxstyle import __version__
    from onnxstyle.sysinfo import fingerprint

    facts = fingerprint()
    gpus = facts.get("gpu")
    return {
        "hostname": socket.gethostname(),
        "cpu_model": str(facts.get("cpu", "")),
        "gpu_names": tuple(gpus) if isinstance(gpus, list) else (),
        "onnxstyle": __version__,
        "pid": os.getpid(),
    }


def parse_address(text: str) -> str:
    """``--cluster``'s one parser: "local", HOST:PORT (the head's GCS) or ray://HOST:PORT, port 1–65535.

    Checked before anything starts, so a typo is a usage error, not a connection error about a host.
    """
    address = text.strip()
    if address == "local":
        return address
    from onnxstyle.text import printable

    forms = f"--cluster takes HOST:PORT (the head node's GCS address), ray://HOST:PORT or local, got '{printable(text)}'"
    rest = address.removeprefix("ray://")
    if "://" in rest or "/" in rest:
        raise UsageError(forms)
    host, _, port = rest.rpartition(":")
    if not host.strip("[]") or not port.isdigit():
        raise UsageError(forms)
    if not 1 <= int(port) <= 65535:
        raise UsageError(f"--cluster port must be between 1 and 65535, got {port} in '{printable(text)}'")
    return address


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT) -> list[NodeInfo]:
    """Join the cluster at ``address`` ("local" starts one on this machine) and describe its live nodes.

    Refuses, in one line each: a malformed address, Ray missing, an address that does not answer within
    ``timeout`` seconds, and nodes that run another onnxstyle version than this one (named). A local
    cluster belongs to this process: a reaper ends its processes when this process ends, however it ends.
    """
    address = parse_address(address)
    ray = require_ray()
    from onnxstyle import __version__

    if not ray.is_initialized():
        started = time.monotonic()
        if address != "local":
            _check_reachable(address, timeout)
        else:
            from onnxstyle.cluster.reaper import start_reaper

            start_reaper()
        logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's notices (token auth, …) are not this command's output
        try:
            with _our_signal_handlers():
                # "local" always starts a new cluster; None would join any cluster already running on this machine.
                ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
            waited = time.monotonic() - started
            raise UsageError(f"cannot reach a Ray cluster at {address} (gave up after {waited:.0f} s of {timeout:.0f}): {str(error).splitlines()[0]}") from None
        except KeyboardInterrupt:
            _stop_started(ray, address)
            raise
    nodes = live_nodes()
    probes, failures = gather({node.node_id: _probe_on(ray, node.node_id) for node in nodes}, timeout=max(timeout, 60.0))
    broken = [f"{node.label}: {failures[node.node_id]}" for node in nodes if "RayTaskError" in failures.get(node.node_id, "")]
    if broken:
        raise UsageError(f"nodes that cannot run onnxstyle {__version__} (install it there): {'; '.join(broken)}")
    answered = [
        {**node.__dict__, **{key: value for key, value in probes[node.node_id].items() if key != "pid"}, "label": ""}
        for node in nodes
        if node.node_id in probes
    ]
    if not answered:
        raise WorkerError(f"no node of the Ray cluster at {address} answered")
    hosts = [facts["hostname"] or facts["address"] for facts in answered]
    described = [
        NodeInfo(**{**facts, "label": host if hosts.count(host) == 1 else ""}) for facts, host in zip(answered, hosts, strict=True)
    ]
    mismatched = [node for node in described if node.onnxstyle != __version__]
    if mismatched:
        listed = ", ".join(f"{node.label} has {node.onnxstyle}" for node in mismatched)
        raise UsageError(f"mixed onnxstyle versions in the cluster: this machine has {__version__}, {listed}; install one version everywhere")
    return described


@contextmanager
def _our_signal_handlers() -> Iterator[None]:
    """Ctrl-C and SIGTERM keep meaning "stop and say what was kept" while and after Ray starts.

    ``ray.init`` installs SIGTERM handlers that exit with 1 or 15, and its core worker a native one that
    dumps a stack and aborts; during the call ours stay, and afterwards they are put back.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from ray._private import ray_constants, utils

    ours = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    install, no_dump = utils.set_sigterm_handler, getattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", False)
    utils.set_sigterm_handler = lambda handler: None
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when the core worker starts
    try:
        yield
    finally:
        utils.set_sigterm_handler, ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = install, no_dump
        for signum, handler in ours.items():
            if handler is not None:
                signal.signal(signum, handler)


def _stop_started(ray: Any, address: str) -> None:
    """Stop what an interrupted ``ray.init`` started, at once: Ray's own clean-up waits for each process to
    answer SIGTERM, and its agents never do."""
    if address == "local":
        from onnxstyle.cluster.reaper import reap_now

        reap_now()
    try:
        ray.shutdown()
    except Exception:  # a half-started session may not know its own parts
        pass


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connect to HOST:PORT first: Ray's own client would retry for minutes before saying anything."""
    host, _, port = parse_address(address).removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise UsageError(f"cannot reach a Ray cluster at {address} within {timeout:.0f} s: {error.strerror or error}") from None


def _probe_on(ray: Any, node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_describe_node)
    return task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()


def gather(refs: dict[str, Any], *, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(results by key, why the others have none): a worker or node that went away, vanished before it ran,
    did not answer within ``timeout`` seconds (all keys together), or raised (its last line)."""
    ray = require_ray()
    ready, waiting = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    results, failures = {}, {}
    for key, ref in refs.items():
        if ref in waiting:
            failures[key] = f"no answer within {timeout:.0f} s"
            continue
        try:
            results[key] = ray.get(ref)
        except Exception as error:
            failures[key] = error_line(error)
    return results, failures


def error_line(error: BaseException) -> str:
    """One line for a Ray error: its type, and the last line of the cause a task raised (not Ray's traceback)."""
    cause = str(getattr(error, "cause", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {cause[-1] if cause else ''}".strip()


def live_nodes() -> list[NodeInfo]:
    """The cluster's nodes that are alive now, head first."""
    ray = require_ray()
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = {key: float(value) for key, value in node.get("Resources", {}).items()}
        nodes.append(
            NodeInfo(
                node_id=node["NodeID"], address=node.get("NodeManagerAddress", ""), cpus=int(resources.get("CPU", 0)),
                gpus=int(resources.get("GPU", 0)), resources=resources,
            )
        )
    nodes.sort(key=lambda node: "node:__internal_head__" not in node.resources)
    if not nodes:
        raise WorkerError("the Ray cluster has no live nodes")
    return nodes


def is_lost(error: BaseException) -> bool:
    """Whether ``error`` means a worker or its node went away (its work can be rerun elsewhere), not a bug in the work."""
    ray = require_ray()
    lost = tuple(
        getattr(ray.exceptions, name)
        for name in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError")
        if hasattr(ray.exceptions, name)
    )
    return isinstance(error, lost)
