import os

import pytest

os.environ.setdefault("ONNXSTYLE_OFFLINE", "1")


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

    from onnxstyle import cli as module

    def run(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["onnxstyle", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            module.main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run
