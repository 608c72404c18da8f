"""Writing files so that a user's data is never lost: every write is atomic, with the permissions the umask gives.

A write goes to a temporary file in the destination's folder, is flushed to disk, and only then renamed over
the destination, so a full disk, a crash or a kill leaves either the old file or the new one, never half of
one. ``mkstemp`` creates files 0600 whatever the umask; the rename keeps the mode the umask asks for, as
any other tool's output would have. Several files that belong together (an export's graphs and metadata)
are staged first and renamed together, so a failure writes none of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from onnxstyle.errors import OutputError


def _umask_mode() -> int:
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


def _stage(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write into a temporary sibling of ``path``; its name, fsynced and with the umask's mode."""
    directory = path.parent if str(path.parent) else Path(".")
    handle, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    staged = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(staged, _umask_mode())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Replace ``path`` with ``data`` (bytes, text as UTF-8, or a function writing to a binary file) in one step."""
    return write_all({Path(path): data})[0]


def write_all(files: dict[Path, bytes | str | Callable[[BinaryIO], None]]) -> list[Path]:
    """Write several files all-or-nothing: everything is staged before the first rename."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            staged.append((path, _stage(path, _writer(data))))
    except OSError as error:
        for _, temporary in staged:
            temporary.unlink(missing_ok=True)
        raise OutputError(f"{path}: could not write ({error.strerror or error}); nothing was replaced") from error
    except BaseException:
        for _, temporary in staged:
            temporary.unlink(missing_ok=True)
        raise
    for path, temporary in staged:
        os.replace(temporary, path)
    return [path for path, _ in staged]


def _writer(data: bytes | str | Callable[[BinaryIO], None]) -> Callable[[BinaryIO], None]:
    if not isinstance(data, (bytes, str)):
        return data
    encoded = data.encode("utf-8") if isinstance(data, str) else data

    def write(out: BinaryIO) -> None:
        out.write(encoded)

    return write


def same_file(first: str | Path, second: str | Path) -> bool:
    """Whether two paths name one file (hard links and symlinks included)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return Path(first).resolve() == Path(second).resolve()


def check_output(
    path: str | Path,
    *,
    formats: Iterable[str] | None = None,
    inputs: Iterable[str | Path] = (),
    replace: bool = True,
    what: str = "output",
) -> Path:
    """Fail before any work if ``path`` cannot or must not take an output.

    Refused: an unsupported suffix, a directory in the way, a missing or unwritable folder (tested by
    creating a file there, since root ignores permission bits), one of the run's own ``inputs``, and an
    existing file when ``replace`` is False.
    """
    path = Path(path)
    if formats is not None:
        allowed = sorted(formats)
        if path.suffix.lower() not in allowed:
            raise OutputError(f"{path}: unsupported {what} format '{path.suffix}'; use one of {', '.join(allowed)}")
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name for the {what}")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{path}: directory {directory} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".onnxstyle-probe-"):
            pass
    except OSError as error:
        raise OutputError(f"{path}: directory {directory} is not writable ({error.strerror or error})") from None
    for source in inputs:
        if Path(source).exists() and same_file(path, source):
            raise OutputError(f"{path} is also an input ({source}); choose another {what} path")
    if path.exists() and not replace:
        raise OutputError(f"{path} exists; use --force to replace it")
    return path
