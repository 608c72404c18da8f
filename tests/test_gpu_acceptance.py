"""The prepared GPU acceptance run, exercised on the CPU: every stage runs, in order, and the tarball holds the reports."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-acceptance.sh"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # ≈55 s on an Intel Xeon, ≈2 min on an AMD EPYC without AVX-512; `make gpu-dry-run` and `make test-all` run it
def test_dry_run_runs_every_stage_and_packs_the_reports(tmp_path):
    out = tmp_path / "acceptance"
    result = _run("", str(out), env={"DRY_RUN": "1", "ACCEPTANCE_SECONDS": "240"})
    assert result.returncode == 0, result.stdout + (out / "acceptance.log").read_text()
    stages = [line.split("] ", 1)[1].split(":")[0] for line in result.stdout.splitlines() if ": exit " in line]
    assert stages == [
        "env", "providers --check", "gradient parity", "bench A (fp32)", "bench B (tf32, fp16, bf16)", "bench C (CUDA graphs)", "stylize --engine auto",
    ]
    with tarfile.open(out / "dryrun-cpu-reports.tar.gz") as archive:
        names = set(archive.getnames())
    for stem in ("env.json", "providers-check.json", "parity.json", "bench-fp32.json", "bench-precision.json", "bench-cuda-graph.json"):
        assert f"dryrun-cpu-{stem}" in names
    assert "acceptance.log" in names and "dryrun-cpu-cuda-graph-vs-plain.txt" in names and "dryrun-cpu-auto-64.png" in names
    assert re.search(r"auto: \S+ \w+ lbfgs — ", (out / "acceptance.log").read_text())
    checks = {check["runner"]: check for check in json.loads((out / "dryrun-cpu-providers-check.json").read_text())}
    assert checks["ort-cpu"]["ok"]
    parity = json.loads((out / "dryrun-cpu-parity.json").read_text())
    assert [row["runner"] for row in parity["rows"]] == ["ort-cpu", "torch-cpu"] and not any(row["error"] for row in parity["rows"])
    assert parity["rows"][0]["grad_error"] < 1e-4
    for stem in ("bench-fp32", "bench-precision", "bench-cuda-graph"):
        cells = json.loads((out / f"dryrun-cpu-{stem}.json").read_text())["cells"]
        assert any(cell["status"] == "ok" for cell in cells), stem
    precisions = {cell["precision"] for cell in json.loads((out / "dryrun-cpu-bench-precision.json").read_text())["cells"] if cell["status"] == "ok"}
    assert "fp16" in precisions


def test_wheel_dir_without_onnxruntime_is_refused_in_one_line(tmp_path):
    result = _run(str(tmp_path), str(tmp_path / "out"), env={"DRY_RUN": "1"})
    assert result.returncode == 2 and "holds no onnxruntime_gpu-*.whl, onnxruntime/ or onnxruntime.tar.xz.part-*" in result.stdout


def test_parts_are_reassembled_checked_and_unpacked_by_python(tmp_path):
    package = tmp_path / "src" / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("PARTS = True\n# " + os.urandom(2000).hex() + "\n")
    parts = tmp_path / "parts"
    parts.mkdir()
    with tarfile.open(parts / "onnxruntime.tar.xz", "w:xz") as archive:
        archive.add(package, arcname="onnxruntime")
    subprocess.run(
        "split -b 200 onnxruntime.tar.xz onnxruntime.tar.xz.part- && sha256sum onnxruntime.tar.xz > onnxruntime.tar.xz.sha256 && rm onnxruntime.tar.xz",
        shell=True, cwd=parts, check=True,
    )
    assert len(list(parts.glob("*.part-*"))) > 1
    unpack = REPO / "scripts" / "gpu-unpack.sh"
    done = subprocess.run([str(unpack), str(parts), str(tmp_path / "site"), sys.executable], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "onnxruntime" / "__init__.py").read_text().startswith("PARTS = True")
    sorted(parts.glob("*.part-*"))[-1].unlink()
    missing = subprocess.run([str(unpack), str(parts), str(tmp_path / "site2"), sys.executable], capture_output=True, text=True)
    assert missing.returncode == 3 and "do not add up" in missing.stderr
