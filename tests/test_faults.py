"""Faults and bad input: nothing lost, nothing overwritten, one line each (one test per class of failure)."""

import errno
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onnxstyle import files
from onnxstyle.errors import ImageError, NumericalError, OutputError, exit_code_markdown
from onnxstyle.images import DEMO_CONTENT, load_image, save_image
from onnxstyle.report import ReportWriter, load_report, write_report
from onnxstyle.stylize import stylize

FAST = dict(weights="synthetic", threads=2, model="nin", size=64)
ROOT = Path(__file__).resolve().parents[1]


def png(path, array, bit_depth=16):
    """A PNG written by hand (Pillow writes no 16-bit RGB), or only its header when ``array`` is a (width, height)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if isinstance(array, tuple):
        width, height, color, raw = *array, 2, b"\x00"
    else:
        height, width = array.shape[:2]
        color = {2: 0, 3: 2}[array.ndim]
        raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def demo_file(tmp_path, name="content.png"):
    return save_image(load_image(DEMO_CONTENT).resize((64, 64)), tmp_path / name)


# 1. an input used as output ------------------------------------------------------------------------------


def test_no_output_may_replace_an_input(cli, tmp_path):
    photo = demo_file(tmp_path, "same.png")
    before = photo.read_bytes()
    result = cli("stylize", photo, "demo:style", "-o", photo, "--weights", "synthetic", "--model", "nin", "--size", "64")
    assert result.returncode == 4 and "is also an input" in result.stderr
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    for args in (["demo:content", "demo:style", "--init", photo, "-o", photo], [photo, "demo:style", "-o", link]):
        result = cli("stylize", *args, "--weights", "synthetic")
        assert result.returncode == 4 and "is also an input" in result.stderr, result.stderr
    # a multi-resolution run's intermediate image would be out.scale64.png: refused before the first scale
    intermediate = demo_file(tmp_path, "out.scale64.png")
    with pytest.raises(OutputError, match="out.scale64.png is also an input"):
        from onnxstyle.stylize import stylize_scales

        stylize_scales(intermediate, ["demo:style"], tmp_path / "out.png", scales=[64, 96], iterations=2, weights="synthetic", model="nin")
    assert photo.read_bytes() == before


# 2. a failed run never replaces an existing output with something not better than the start ---------------


class NaNAfter:
    """Wraps an engine so that evaluation ``at`` returns NaN."""

    def __init__(self, engine, at):
        self.engine, self.at, self.calls = engine, at, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def loss_and_grad(self, image):
        self.calls += 1
        terms, grad = self.engine.loss_and_grad(image)
        if self.calls >= self.at:
            terms.total = float("nan")
        return terms, grad


@pytest.mark.parametrize("at,kept", [(2, True), (6, False)])
def test_a_failed_run_keeps_the_existing_output_unless_it_improved(monkeypatch, tmp_path, at, kept):
    from onnxstyle import stylize as module

    output = demo_file(tmp_path, "keep.png")
    before = output.read_bytes()
    real = module.create_engine
    monkeypatch.setattr(module, "create_engine", lambda *args, **kwargs: NaNAfter(real(*args, **kwargs), at))
    with pytest.raises(NumericalError, match="nothing better than the start to save" if kept else "saved the best image"):
        stylize(output=output, iterations=10, optimizer="adam", **FAST)
    assert (output.read_bytes() == before) is kept


def test_non_finite_or_negative_weights_are_refused_before_any_work(cli, tmp_path):
    output = demo_file(tmp_path, "keep.png")
    before = output.read_bytes()
    for option, value in (("--content-weight", "nan"), ("--style-weight", "inf"), ("--tv-weight", "-1"), ("--content-weight", "-5")):
        result = cli("stylize", "--demo", "-o", output, option, value)
        assert result.returncode == 2 and f"{option} must be a finite number" in result.stderr, result.stderr
    assert output.read_bytes() == before


# 3. export lists what it writes and refuses to clobber ------------------------------------------------------


def test_export_never_replaces_files_nobody_named(cli, tmp_path):
    (tmp_path / "data.json").write_text("mine")
    result = cli("export", "nin", "--weights", "synthetic", "-o", tmp_path / "data.onnx")
    assert result.returncode == 4 and "data.json exists; use --force" in result.stderr
    assert (tmp_path / "data.json").read_text() == "mine" and not (tmp_path / "data.onnx").exists()
    (tmp_path / "dir.onnx").mkdir()
    result = cli("export", "nin", "--weights", "synthetic", "-o", tmp_path / "dir.onnx")
    assert result.returncode == 4 and "is a directory" in result.stderr


def test_export_with_force_replaces_all_three_together(cli, tmp_path, monkeypatch):
    from onnxstyle.exporters import export as module

    monkeypatch.setattr(module, "VALIDATION_SIZES", ((64, 64),))
    (tmp_path / "data.json").write_text("mine")
    result = cli("export", "nin", "--weights", "synthetic", "-o", tmp_path / "data.onnx", "--force")
    assert result.returncode == 0, result.stderr
    assert "writes " + str(tmp_path / "data.onnx") in result.stderr.replace("\n", "")
    assert json.loads((tmp_path / "data.json").read_text())["tool"] == "onnxstyle"
    assert {path.name for path in tmp_path.iterdir()} == {"data.onnx", "data.loss.onnx", "data.json"}


def full_disk(monkeypatch, after_files=0):
    """Writes fail with ENOSPC, like a full disk (after ``after_files`` files were staged)."""
    staged = []
    real = files._stage

    def stage(path, write):
        if len(staged) >= after_files:
            raise OSError(errno.ENOSPC, "No space left on device")
        staged.append(path)
        return real(path, write)

    monkeypatch.setattr(files, "_stage", stage)


def test_a_full_disk_writes_nothing_and_keeps_what_was_there(monkeypatch, tmp_path):
    from test_report import sample_report

    first = write_report(sample_report(), tmp_path, "rep")
    saved = {kind: path.read_bytes() for kind, path in first.items()}
    full_disk(monkeypatch, after_files=2)  # the JSON and CSV would fit, the Markdown would not
    with pytest.raises(OutputError, match=r"could not write \(No space left on device\); nothing was replaced"):
        write_report(sample_report(2.0), tmp_path, "rep")
    assert {kind: path.read_bytes() for kind, path in first.items()} == saved
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]
    with pytest.raises(OutputError, match="nothing was replaced"):
        save_image(load_image(DEMO_CONTENT), tmp_path / "new.png")
    assert not (tmp_path / "new.png").exists()


# 4. reports: atomic, never replaced by fewer measured cells, distinct for concurrent runs ----------------------


def test_a_report_with_fewer_measured_cells_goes_beside_the_complete_one(tmp_path):
    from test_report import sample_report

    complete = write_report(sample_report(), tmp_path, "rep")["json"]
    partial = sample_report()
    partial.cells = partial.cells[:1]
    with ReportWriter(tmp_path, "rep") as writer:
        paths = writer.write(partial, final=True)
        assert paths["json"].name == "rep.partial.json"
        assert writer.kept.startswith(f"kept {complete} (3 measured cells)")
    assert len(load_report(complete).measured()) == 3
    again = sample_report(1.1)
    with ReportWriter(tmp_path, "rep") as writer:  # as many measured cells: it replaces, and the partial goes
        assert writer.write(again)["json"] == complete and writer.kept is None
    assert not (tmp_path / "rep.partial.json").exists()
    (tmp_path / "foreign.json").write_text('{"mine": true}')
    with ReportWriter(tmp_path, "foreign") as writer:  # not a report: never replaced
        assert writer.write(sample_report())["json"].name == "foreign.partial.json"


def test_concurrent_runs_with_one_name_write_distinct_reports(tmp_path):
    from test_report import sample_report

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "rep.lock").write_text(str(holder.pid))
        with ReportWriter(tmp_path, "rep") as writer:
            assert writer.stem == "rep-2" and writer.write(sample_report())["json"].name == "rep-2.json"
        assert (tmp_path / "rep.lock").exists() and not (tmp_path / "rep-2.lock").exists()
    finally:
        holder.kill()
        holder.wait()
    with ReportWriter(tmp_path, "rep") as writer:  # the holder died: its lock is stale
        assert writer.stem == "rep"


def test_a_killed_bench_keeps_the_cells_it_measured(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "bench", "--provider", "cpu", "--model", "nin", "--sizes", "64,96,128,160",
         "--iterations", "20", "--runs", "2", "--warmup", "0", "--weights", "synthetic", "--no-check", "--out", str(tmp_path),
         "--name", "killed"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "it/min" not in process.stderr.readline():
        pass
    time.sleep(0.5)
    process.kill()
    process.communicate(timeout=30)
    report = load_report(tmp_path / "killed.json")
    assert report.cells[0].status == "ok" and report.cells[0].median > 0
    assert not (tmp_path / "killed.png").exists()  # drawn only at the end


# 5. high bit depth -------------------------------------------------------------------------------------------


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    grey = np.asarray(load_image(png(tmp_path / "grey16.png", ramp)), dtype=np.float64)
    assert grey.shape == (64, 64, 3) and abs(grey.mean() - 127.5) < 1
    rgb = np.stack([ramp, ramp // 4, 65535 - ramp], -1)
    colour = np.asarray(load_image(png(tmp_path / "rgb16.png", rgb)), dtype=np.float64)
    assert np.allclose(colour.mean(axis=(0, 1)), [127.5, 31.9, 127.5], atol=1)
    Image.fromarray(ramp).save(tmp_path / "grey16.tif")
    assert abs(np.asarray(load_image(tmp_path / "grey16.tif"), dtype=np.float64).mean() - 127.5) < 1
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tif")
    assert abs(np.asarray(load_image(tmp_path / "float.tif"), dtype=np.float64).mean() - 127.5) < 1


# 6. SIGTERM is Ctrl-C ------------------------------------------------------------------------------------------


def test_sigterm_saves_the_current_image_of_a_stylize_run(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxstyle.cli", "stylize", "--demo", "--model", "nin", "--size", "64", "--iterations", "100000",
         "--optimizer", "adam", "--save-every", "20", "-o", "out.png"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "out_20.png").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert re.search(r"interrupted after \d+ iteration\(s\); saved the best image so far to out.png", stderr.replace("\n", ""))
    assert Image.open(tmp_path / "out.png").size == (64, 64)


# 7. permissions follow the umask -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_are_created_with_the_umask_mode(tmp_path, umask):
    from test_report import sample_report

    previous = os.umask(umask)
    try:
        paths = [save_image(load_image(DEMO_CONTENT), tmp_path / "image.png"), *write_report(sample_report(), tmp_path, "rep").values()]
    finally:
        os.umask(previous)
    assert {oct(path.stat().st_mode & 0o777) for path in paths} == {oct(0o666 & ~umask)}


# 8. an address-space limit is a refusal with the estimate, never a segfault ------------------------------------


def limited(gigabytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (int(gigabytes * 2**30), resource.RLIM_INFINITY))

    return apply


def test_an_address_space_limit_is_met_with_the_estimate(tmp_path):
    command = [sys.executable, "-m", "onnxstyle.cli"]
    stylized = subprocess.run(
        [*command, "stylize", "--demo", "--size", "512", "--scales", "512", "--tile", "0", "--iterations", "1", "-o", "x.png"],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=limited(1.9), timeout=300,
    )
    assert stylized.returncode == 2 and "512x512 untiled needs ≈" in stylized.stderr and "leave out --tile 0" in stylized.stderr
    benched = subprocess.run(
        [*command, "bench", "--provider", "cpu", "--model", "vgg", "--sizes", "512", "--tile", "0", "--iterations", "1", "--runs", "1",
         "--no-check", "--out", str(tmp_path), "--name", "limited"],
        cwd=tmp_path, capture_output=True, text=True, preexec_fn=limited(1.9), timeout=300,
    )
    assert benched.returncode == 2 and "no cell was measured" in benched.stderr and "Traceback" not in benched.stderr
    (cell,) = load_report(tmp_path / "limited.json").cells
    assert cell.status == "skipped" and cell.reason.startswith("needs ≈")


# 9. a decompression bomb -----------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_one_line(cli, tmp_path, monkeypatch):
    bomb = png(tmp_path / "bomb.png", (100000, 100000), bit_depth=8)
    with pytest.raises(ImageError, match="100000x100000 is 10,000,000,000 pixels, over the .*ONNXSTYLE_MAX_IMAGE_PIXELS"):
        load_image(bomb)
    result = cli("stylize", bomb, "demo:style")
    assert result.returncode == 3 and "decompression bombs" in result.stderr
    monkeypatch.setenv("ONNXSTYLE_MAX_IMAGE_PIXELS", str(10**11))
    with pytest.raises(ImageError, match="corrupt or unreadable"):  # past the limit, the (empty) data itself is what fails
        load_image(bomb)


# 10, 13, 16, 17. options: one line each, at parse time, with the documented exit code ----------------------------


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["stylize", "--demo", "--learning-rate", "-1"], 2, "--learning-rate must be a finite number above 0"),
        (["stylize", "--demo", "--style-scale", "nan"], 2, "--style-scale must be a finite number above 0"),
        (["stylize", "--demo", "--style-scale", "1e9"], 2, "--style-scale 1e+09 makes the style image"),
        (["stylize", "--demo", "--style-blend-weights", "a,b"], 2, "--style-blend-weights needs numbers"),
        (["stylize", "--demo", "--style-blend-weights", ""], 2, "--style-blend-weights is empty"),
        (["stylize", "--demo", "--engine", "tensorflow"], 2, "unknown engine 'tensorflow'"),
        (["stylize", "--demo", "--seed", str(2**64)], 2, "--seed must be between 0 and 2**64-1"),
        (["stylize", "--demo", "--scales", "64,96", "--scale-iterations", "a,b"], 2, "--scale-iterations needs whole numbers"),
        (["stylize", "--demo", "--style-layers", "relu1_1,relu1_1"], 2, "--style-layers names relu1_1 more than once"),
        (["export", "vgg", "--style-layers", "relu2_1,relu2_1"], 2, "relu2_1 more than once"),
        (["bench", "--duration", "nan"], 2, "--duration must be a positive number of seconds"),
        (["bench", "--duration", "inf"], 2, "--duration must be a positive number of seconds"),
        (["bench", "--name", "../../escape"], 2, "--name must be a plain file name"),
        (["stylize", "--demo", "--size", "8"], 3, "image 8x8 is too small for vgg19 up to relu5_1: needs at least 16x16"),
        (["stylize", "--demo", "--engine", "torch", "--provider", "tpu"], 2, "unknown torch device 'tpu'"),
        (["stylize", "--demo", "--iterations", "0"], 2, "--iterations must be a positive whole number"),
        (["stylize", "--demo", "--threads", "-2"], 2, "--threads must be positive"),
        (["stylize", "--demo", "--engine", "torch", "--precision", "tf32"], 2, "tf32 is a tensor-core mode of NVIDIA GPUs"),
        (["stylize", "--demo", "--scales", "8000", "--tile", "0"], 2, "untiled needs ≈"),
        (["stylize", "--demo", "--size", "100000"], 2, "does not fit even tiled"),
    ],
)
def test_bad_options_are_one_line_before_any_work(cli, tmp_path, args, code, message):
    started = time.perf_counter()
    destination = {"stylize": ["-o", tmp_path / "out.png"], "export": ["-o", tmp_path / "x.onnx"], "bench": ["--out", tmp_path / "r"]}
    result = cli(*args, *destination[args[0]], cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr.replace("\n", ""), result.stderr
    assert not list(tmp_path.glob("**/*.png")) and not list(tmp_path.glob("**/*.json"))
    assert time.perf_counter() - started < 30


def test_more_threads_than_cpus_are_capped_with_a_warning(cli, tmp_path):
    result = cli("stylize", "--demo", "--model", "nin", "--size", "64", "--iterations", "2", "--threads", "1000", "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--threads 1000 is more than the" in result.stderr


def test_exit_codes_in_the_docs_are_the_codes_in_the_code():
    assert exit_code_markdown() in (ROOT / "docs" / "reliability.md").read_text()


# 11. outputs checked before the work --------------------------------------------------------------------------------


def test_output_locations_fail_before_the_work(cli, tmp_path, monkeypatch):
    from test_report import sample_report

    (tmp_path / "dir.png").mkdir()
    assert cli("stylize", "--demo", "-o", tmp_path / "dir.png").returncode == 4
    first = write_report(sample_report(), tmp_path, "a")["json"]
    second = write_report(sample_report(2.0), tmp_path, "b")["json"]
    for plot, message in ((tmp_path / "x.xyz", "unsupported plot format '.xyz'"), (tmp_path / "missing" / "c.png", "does not exist")):
        result = cli("report", "compare", first, second, "--plot", plot)
        assert result.returncode == 4 and message in result.stderr and "how the machines" not in result.stdout
    monkeypatch.setenv("TORCH_HOME", "/proc/onnxstyle-torch-home")
    monkeypatch.setenv("ONNXSTYLE_OFFLINE", "0")
    result = cli("export", "nin", "--weights", "nin-imagenet", "-o", tmp_path / "n.onnx")
    assert result.returncode == 4 and "cannot cache weights 'nin-imagenet'" in result.stderr


def test_export_onto_a_full_disk_writes_none_of_its_files(monkeypatch, tmp_path):
    from onnxstyle.exporters import export as module

    monkeypatch.setattr(module, "VALIDATION_SIZES", ((64, 64),))
    full_disk(monkeypatch, after_files=1)
    with pytest.raises(OutputError, match=r"could not write \(No space left on device\); nothing was replaced"):
        module.export_backbone(backbone="nin", weights="synthetic", output=tmp_path / "n.onnx", validation_sizes=((64, 64),))
    assert not list(tmp_path.iterdir())


# 14. a bench that measured nothing does not exit 0 ------------------------------------------------------------------


def test_a_bench_that_measured_nothing_exits_with_its_failure(cli, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    result = cli(
        "bench", "--provider", "cpu", "--model", "nin", "--sizes", "64", "--iterations", "1", "--runs", "1", "--warmup", "0",
        "--weights", garbage, "--no-check", "--out", tmp_path / "r", "--name", "bad",
    )
    assert result.returncode == 5, result.stderr
    assert "no cell was measured; nin ort-cpu 64x64: " in result.stderr and "not a readable torch checkpoint" in result.stderr.replace("\n", "")
    (cell,) = load_report(tmp_path / "r" / "bad.json").cells
    assert cell.status == "failed" and cell.error_code == 5


# 15. Ctrl-C during set-up or export says what it interrupted and what it kept -----------------------------------------


def test_ctrl_c_during_set_up_or_export_says_what_was_kept(cli, tmp_path, monkeypatch):
    from onnxstyle import stylize as stylize_module
    from onnxstyle.exporters import export as export_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "build_features_model", interrupt)
    result = cli("export", "nin", "--weights", "synthetic", "-o", tmp_path / "n.onnx")
    assert result.returncode == 130 and "export interrupted before writing: nothing was written" in result.stderr
    monkeypatch.setattr(stylize_module, "create_engine", interrupt)
    existing = demo_file(tmp_path, "out.png")
    before = existing.read_bytes()
    result = cli("stylize", "--demo", "--weights", "synthetic", "-o", existing)
    assert result.returncode == 130 and f"stylize interrupted while setting up; {existing} was left as it was" in result.stderr
    assert existing.read_bytes() == before


# 18. misleading text ---------------------------------------------------------------------------------------------------


def test_weights_verify_says_what_it_verified(cli, tmp_path):
    from onnxstyle.backbones import get_backbone
    from onnxstyle.weights import create_backbone

    random = tmp_path / "random.pth"
    random.write_bytes(os.urandom(2048))
    result = cli("weights", "verify", random)
    assert result.returncode == 5 and "bad" in result.stdout and "not a readable torch checkpoint" in result.stdout
    model, _ = create_backbone(get_backbone("nin"), ["relu12"], weights="synthetic")
    checkpoint = tmp_path / "mine.pth"
    torch.save({f"{name}.{suffix}": getattr(conv, suffix) for name, conv in model.convs().items() for suffix in ("weight", "bias")}, checkpoint)
    result = cli("weights", "verify", checkpoint)
    assert result.returncode == 0
    assert "not in the catalogue" in result.stdout and "not verified against a published file" in result.stdout and "every nin layer" in result.stdout
