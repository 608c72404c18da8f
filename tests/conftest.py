import os
import tempfile

import pytest

os.environ.setdefault("ONNXSTYLE_OFFLINE", "1")
# What the suite reads back is plain text whatever terminal it runs in: colour forced on (CI runners set these)
# would put escape codes inside the messages and tables it asserts on.
for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
    os.environ.pop(name, None)
# Ray puts its sockets some 70 characters deep under TMPDIR, and a socket path holds 107 bytes: with a long temporary
# path, the cluster tests' local Ray keeps its session under /tmp (our own worker sockets need no path at all).
if len(tempfile.gettempdir()) > 32 and os.path.isdir("/tmp"):
    os.environ.setdefault("RAY_TMPDIR", "/tmp")
# --engine auto's measurements: one folder for the whole session (each backbone and size is probed once, not per
# test), never the user's own cache. Tests of the cache itself point it elsewhere.
os.environ["ONNXSTYLE_CACHE_DIR"] = tempfile.mkdtemp(prefix="onnxstyle-auto-")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own torch hub and models folders: no real cache is read or written."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("ONNXSTYLE_MODELS", str(tmp_path / "models"))
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    yield


@pytest.fixture
def cli(monkeypatch, capsys):
    """The console script run in this process (no interpreter start-up per call): exit code, stdout, stderr.

    Its error handling is main()'s own; an exception it lets through fails the test.
    """
    import subprocess
    import sys

    from onnxstyle import cli as entry
    from onnxstyle import console as module

    def run(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["onnxstyle", *map(str, args)])
        capsys.readouterr()
        # Consoles chosen now, for the captured streams, as the console script chooses them for a pipe: whether pytest
        # was started on a terminal (or under `script`) cannot change a line the tests read.
        monkeypatch.setattr(module, "out", module.make_console(stderr=False))
        monkeypatch.setattr(module, "err", module.make_console(stderr=True))
        code = 0
        try:
            entry.main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run
