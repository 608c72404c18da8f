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
