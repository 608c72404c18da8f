"""Output stays whole: a message is one line holding the whole path, piped at any COLUMNS and on a terminal;
a path with rich markup in it prints as it is; on a terminal, tables fit its width."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from test_report import sample_report

from onnxstyle.report import write_report

# One interpreter runs every command (torch is imported once): each is main() as the console script calls it,
# with a marker line after it on each stream (on a terminal, both are one), so the output can be cut per command.
DRIVER = """
import json, sys
from onnxstyle.cli import main
for index, argv in enumerate(json.loads(sys.argv[1])):
    sys.argv = ["onnxstyle", *argv]
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    for stream in (sys.stdout, sys.stderr) if not sys.stderr.isatty() else (sys.stdout,):
        stream.write(f"\\n@@ {index} exit {code}\\n")
        stream.flush()
"""
MARKER = re.compile(r"\r?\n@@ (\d+) exit (-?\d+)\r?\n")
# What a terminal acts on rather than shows: SGR colours, cursor moves, erase line, cursor hide/show.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")
TABLE_LINE = re.compile(r"^[┏┃┡│└┗━─╭╰]")
# A CPU name whose brackets are rich markup and whose spaces would be wrap points.
CPU = "[red]Test CPU[/] [bold]" + " ".join(["Zen"] * 40)


@pytest.fixture
def deep(tmp_path):
    """A directory over 300 characters long with rich markup and a space in it, holding the inputs of the commands."""
    path = tmp_path.joinpath("a" * 60, "[red]x[/]", "b" * 60, "[/]y [bold]", "c" * 60, "d" * 60)
    path.mkdir(parents=True)
    assert len(str(path)) > 300
    (path / "w.pth").write_bytes(os.urandom(2048))
    (path / "pp.onnx").write_bytes(b"mine")
    (path / "foreign.json").write_text('{"a": 1}')
    write_report(sample_report(cpu=CPU), path, "r")
    return path


def commands(deep):
    """(argv, exit code, stream, a line's start, what else that line says) for each command."""
    return [
        (["weights", "verify", deep / "w.pth"], 5, "out", f"bad {deep / 'w.pth'}: ", "not a readable torch checkpoint"),
        (["export", "nin", "--weights", "synthetic", "-o", deep / "pp.onnx"], 4, "err", f"error: {deep / 'pp.onnx'}", "--force"),
        (["report", "compare", deep / "r.json", deep / "r.json", "--plot", deep / "missing" / "c.png"], 4, "err",
         f"error: {deep / 'missing' / 'c.png'}", "does not exist"),
        (["report", "show", deep / "foreign.json"], 10, "err", f"error: {deep / 'foreign.json'} ", "is not an onnxstyle"),
        (["report", "show", deep / "r.json"], 0, "out", f"machine: {CPU}, ", "CPUs used"),
    ]


def drive(argvs, deep, columns, *, terminal=False):
    """Runs ``argvs`` in one process, piped or (``terminal``) under ``script``; the output cut per command."""
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    argument = json.dumps([[str(item) for item in argv] for argv in argvs])
    command = [sys.executable, "-c", DRIVER, argument]
    if terminal:
        # script's pseudo-terminal takes its size from ours, if any: set it to COLUMNS, as a terminal window would be.
        line = f"stty cols {columns} rows 50 2>/dev/null; exec {shlex.join(command)}"
        command = ["script", "-qefc", line, "/dev/null"]
    result = subprocess.run(command, cwd=deep, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    streams = {"out": result.stdout, "err": CONTROL.sub("", result.stdout) if terminal else result.stderr}
    cut = {name: MARKER.split(text) for name, text in streams.items()}
    assert len(cut["out"]) == 3 * len(argvs) + 1, result.stdout + result.stderr
    codes = [int(code) for code in cut["out"][2::3]]
    return codes, {name: [re.split(r"\r?\n|\r", chunk) for chunk in parts[0:-1:3]] for name, parts in cut.items()}


@pytest.mark.parametrize("columns", [None, "20"], ids=["COLUMNS-unset", "COLUMNS-20"])
def test_piped_messages_are_whole_lines_at_any_width(deep, columns):
    expected = commands(deep)
    codes, lines = drive([argv for argv, *_ in expected], deep, columns)
    for index, (argv, code, stream, start, rest) in enumerate(expected):
        shown = lines[stream][index]
        assert codes[index] == code, (argv, lines["err"][index])
        assert any(line.startswith(start) and rest in line for line in shown), (argv, shown)
    table = [line for line in lines["out"][-1] if TABLE_LINE.match(line)]
    assert table and max(map(len, table)) > 20  # piped tables are not squeezed to COLUMNS


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` to run the commands on a terminal")
def test_on_a_terminal_tables_fit_and_messages_are_not_broken(deep):
    expected = commands(deep)
    codes, lines = drive([argv for argv, *_ in expected], deep, "60", terminal=True)
    for index, (argv, code, _, start, rest) in enumerate(expected):
        shown = lines["err"][index]  # stdout and stderr are one terminal
        assert codes[index] == code, (argv, shown)
        # the terminal folds a long line where it likes; the line itself must reach it unbroken
        assert any(start in line and rest in line for line in shown), (argv, shown)
    table = [line for line in lines["err"][-1] if TABLE_LINE.match(line)]
    assert table and max(map(len, table)) <= 60, "\n".join(table)


def test_export_names_its_files_as_they_are(cli, deep, monkeypatch):
    from onnxstyle.exporters import export as exporter

    paths = [deep / "pp.onnx", deep / "pp.loss.onnx", deep / "pp.json"]

    def export_backbone(*, on_plan, **options):
        on_plan(paths)
        return exporter.ExportResult(*paths, worst_errors={"features": 1e-7, "loss": 2e-7}, tolerance=1e-4)

    monkeypatch.setattr(exporter, "export_backbone", export_backbone)
    result = cli("export", "nin", "--weights", "synthetic", "-o", paths[0], "--force")
    assert result.returncode == 0, result.stderr
    assert f"writes {paths[0]}, {paths[1]}, {paths[2]}" in result.stderr.splitlines()
    printed = result.stdout.splitlines()
    for label, path in zip(("features  ", "loss+grad ", "metadata  "), paths, strict=True):
        assert any(line.startswith(f"{label}{path}") for line in printed), printed
