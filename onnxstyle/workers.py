"""Worker processes: every runner the bench measures lives in a fresh interpreter of its own.

Thread pools and their wait policy (OpenMP, ONNX Runtime's), TF32 and other precision flags, denormal
modes and allocators are process-global. Two runners in one process interfere through them: ONNX Runtime
ran NIN at 64 px at 8,393 it/min alone and 6,950 beside the eager loop, and its speed moved with torch's
``OMP_WAIT_POLICY``. So each runner is set up in its own process with its own environment, and the parent
only schedules: it sends a call, waits for the answer within a deadline, and never computes while a
window is timed.

A worker that crashes, hangs or is killed (out of memory) turns into a :class:`WorkerError` naming the
signal or exit code and the last error line the worker printed; the parent kills it and goes on. Workers
ignore Ctrl-C (the parent stops them), and on Linux die with the parent even if it is killed outright.
"""

from __future__ import annotations

import atexit
import faulthandler
import importlib
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onnxstyle.errors import OnnxstyleError, WorkerError, first_line

KEY_VARIABLE = "ONNXSTYLE_WORKER_KEY"
READY_SECONDS = 120.0  # interpreter start and imports, on a loaded machine
CLOSE_SECONDS = 5.0
# Lines of a Python fatal-error or traceback dump that say where, not what.
_CONTEXT_PREFIXES = ("Current thread", "Thread 0x", "Stack (most recent", "Extension modules:", "Traceback (most recent", "Fatal Python error: Aborted")

_live: set[Worker] = set()


def last_error_line(text: str) -> str:
    """The line of a worker's output that says what went wrong: the last one that is not a traceback frame."""
    for line in reversed(text.splitlines()):
        stripped = line.strip()
        if not stripped or line[:1].isspace() or stripped.startswith(_CONTEXT_PREFIXES) or set(stripped) <= {"^", "~", " "}:
            continue
        return stripped[:300]
    return ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Worker:
    """One fresh Python process hosting one object; the parent calls its methods with deadlines.

    ``environment`` is applied before the interpreter starts, so OpenMP and friends read it at load time.
    ``preload`` names modules imported before the worker reports ready, so that start-up costs stay out of
    anything the caller times afterwards.
    """

    def __init__(
        self,
        label: str,
        *,
        log_dir: Path,
        environment: Mapping[str, str] | None = None,
        preload: tuple[str, ...] = (),
        ready_seconds: float = READY_SECONDS,
        connect: bool = True,
    ) -> None:
        self.label = label
        self.log_path = log_dir / f"{label}-{secrets.token_hex(3)}.log"
        key = secrets.token_bytes(32)
        # On Linux an abstract socket, named by no path: a long TMPDIR cannot push it past a socket path's 107 bytes.
        address = f"\0onnxstyle-{secrets.token_hex(8)}" if sys.platform == "linux" else None
        self._listener = mpc.Listener(address, family="AF_UNIX" if address else None, authkey=key)
        self._connection: mpc.Connection | None = None
        self._stage = "start-up"
        self._preload = preload
        self._ready_seconds = ready_seconds
        self._psutil: Any = None
        self.pid: int | None = None
        env = {**os.environ, **(environment or {}), KEY_VARIABLE: key.hex(), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "onnxstyle.workers", str(address or self._listener.address).encode().hex(), str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **_detached(),
            )
        _live.add(self)
        if connect:
            self.connect()

    def connect(self) -> None:
        """Wait until the worker has started and imported ``preload`` (``connect=False`` lets several start at once)."""
        if self._connection is not None:
            return
        self._accept(self._ready_seconds)
        self.pid = self.call_raw(("init", {"sys_path": list(sys.path), "preload": self._preload}), self._ready_seconds, "start-up")

    def _accept(self, seconds: float) -> None:
        accepted: list[mpc.Connection] = []
        errors: list[BaseException] = []

        def accept() -> None:
            try:
                accepted.append(self._listener.accept())
            except (OSError, EOFError, multiprocessing.AuthenticationError) as error:
                errors.append(error)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        deadline = time.monotonic() + seconds
        while thread.is_alive() and time.monotonic() < deadline and self.process.poll() is None:
            thread.join(0.05)
        if not accepted:
            timed_out = thread.is_alive() and self.process.poll() is None  # else it died (a SIGKILL says so) or refused us
            self.kill()
            raise self._failure(f"did not start within {seconds:.0f} s" if timed_out else None)
        self._connection = accepted[0]

    def start(self, factory: str, timeout: float, **kwargs: Any) -> None:
        """Construct the hosted object, ``"module:Class"`` called with ``kwargs``, inside the worker."""
        self.call_raw(("start", factory, kwargs), timeout, "set-up")

    def call(self, method: str, timeout: float, *, stage: str | None = None, **kwargs: Any) -> Any:
        """``hosted.method(**kwargs)`` in the worker; its exception, a crash or a hang become a WorkerError."""
        return self.call_raw(("call", method, kwargs), timeout, stage or method)

    def run(self, function: str, timeout: float, **kwargs: Any) -> Any:
        """``module:function(**kwargs)`` in the worker (no hosted object needed)."""
        return self.call_raw(("run", function, kwargs), timeout, function.rpartition(":")[2])

    def call_raw(self, request: tuple[Any, ...], timeout: float, stage: str) -> Any:
        self._stage = stage
        connection = self._connection
        if connection is None or self.process.poll() is not None:
            raise self._failure()
        try:
            _send(connection, request)
            if not connection.poll(timeout):
                self.kill()
                raise WorkerError(f"worker {self.label} hung: no answer during {stage} within {timeout:.0f} s; killed it")
            reply = _receive(connection)
        except (EOFError, OSError, BrokenPipeError):
            raise self._failure() from None
        if reply[0] == "ok":
            return reply[1]
        error = WorkerError(reply[1])
        error.exit_code = reply[2]  # the worker's own error class's code (5 for bad weights…), 11 for anything else
        raise error

    def _failure(self, what: str | None = None) -> WorkerError:
        """Why the worker is gone: its signal or exit code, and the last error line it printed."""
        try:
            code = self.process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if what is None:
            if code is not None and code < 0:
                name = _signal_name(-code)
                what = f"was killed by {name} (out of memory?)" if name == "SIGKILL" else f"crashed ({name})"
            else:
                what = f"exited with code {code}"
        self._forget()
        line = last_error_line(self.log_text())
        return WorkerError(f"worker {self.label} {what} during {self._stage}" + (f": {line}" if line else ""))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU time the worker has used so far (0 once it is gone)."""
        import psutil

        try:
            if self._psutil is None:
                self._psutil = psutil.Process(self.process.pid)
            times = self._psutil.cpu_times()
            return float(times.user + times.system)
        except (psutil.Error, OSError):
            return 0.0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Ask the worker to exit; kill it if it does not within a few seconds."""
        if self._connection is not None and self.alive:
            try:
                _send(self._connection, ("exit",))
                self.process.wait(CLOSE_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(CLOSE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self._forget()

    def _forget(self) -> None:
        for closable in (self._connection, self._listener):
            try:
                if closable is not None:
                    closable.close()
            except OSError:
                pass
        self._connection = None
        _live.discard(self)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send(connection: mpc.Connection, message: Any) -> None:
    """Plain pickle, not multiprocessing's: torch registers reductions there that pass tensors as shared-memory
    handles, which only multiprocessing's own children (sharing its authkey) can open."""
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(connection: mpc.Connection) -> Any:
    return pickle.loads(connection.recv_bytes())


def _detached() -> dict[str, Any]:
    """Workers in their own session/process group: a Ctrl-C reaches the parent only, which stops them."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


@atexit.register
def kill_all() -> None:
    """No orphans: whatever path the parent leaves by, its workers go with it."""
    for worker in list(_live):
        worker.kill()


# ---------------------------------------------------------------- the worker's side


def resolve_factory(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def serve(address: str, parent: int) -> int:
    """The worker's loop: answer the parent's requests until it says exit or goes away."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()
    key = bytes.fromhex(os.environ.pop(KEY_VARIABLE))
    connection = mpc.Client(bytes.fromhex(address).decode(), authkey=key)
    hosted: Any = None

    while True:
        try:
            request = _receive(connection)
        except (EOFError, OSError):
            return 0
        kind = request[0]
        if kind == "exit":
            return 0
        try:
            if kind == "init":
                sys.path[:0] = [entry for entry in request[1]["sys_path"] if entry not in sys.path]
                for module in request[1]["preload"]:
                    importlib.import_module(module)
                value: Any = os.getpid()
            elif kind == "start":
                hosted = resolve_factory(request[1])(**request[2])
                value = None
            elif kind == "call":
                if request[1].startswith("_") or hosted is None:
                    raise AttributeError(f"no callable {request[1]!r} on the hosted object")
                value = getattr(hosted, request[1])(**request[2])
            elif kind == "run":
                value = resolve_factory(request[1])(**request[2])
            else:
                raise ValueError(f"unknown request {kind!r}")
            reply: tuple[Any, ...] = ("ok", value)
        except Exception as error:  # noqa: BLE001 - every failure goes back to the parent as one line
            traceback.print_exc()
            line = first_line(error) if str(error).strip() else ""
            if not isinstance(error, OnnxstyleError):
                line = f"{type(error).__name__}: {line}" if line else type(error).__name__
            code = error.exit_code if isinstance(error, OnnxstyleError) else WorkerError.exit_code
            reply = ("error", line, code)
        _send(connection, reply)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2])))
