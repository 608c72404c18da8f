"""Reading a report file someone else may have written, edited or damaged: size limits, kind and version,
and the typed checks every reader runs on a report's JSON before anything is rendered from it.

A report comes from another machine or another person; nothing in it is trusted. Each reader
(``Report.from_json``, ``QualityReport.from_json``) makes one pass over the JSON with the checks below and
refuses the report at its first problem, so no table, verdict or chart ever shows a NaN rate, a negative
median or a string where a figure belongs. Every string is made printable as it is read, so no report can
drive the reader's terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from onnxstyle.errors import ReportError
from onnxstyle.text import printable

MAX_BYTES = 64 * 2**20  # the largest committed report is 0.2 MB; parsed JSON takes ~10x its size in memory
MAX_ITEMS = 10_000  # cells or runs: a table beyond this is not a report anyone reads
T = TypeVar("T")


class Problem(ValueError):
    """The first thing wrong with a report's JSON; the reader turns it into ``ReportError`` naming the file."""


def read_json(file: Path) -> Any:
    """A report file's JSON with every string made printable, or one line saying why it cannot be read."""
    too_big = f"onnxstyle reads reports of up to {MAX_BYTES // 2**20} MB"
    try:
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise ReportError(f"{file} is {size / 2**20:,.1f} MB; {too_big}")
        with file.open("rb") as handle:  # bounded: a device or a growing file may say 0 bytes and never end
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ReportError(f"{file} is over {MAX_BYTES // 2**20} MB; {too_big}")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ReportError(f"report {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"cannot read report {file}: {getattr(error, 'strerror', None) or error}") from None
    try:
        return _printable(json.loads(text))
    except json.JSONDecodeError as error:
        raise ReportError(f"{file} is not valid JSON ({error.msg} at line {error.lineno}); is it a damaged report?") from None
    except RecursionError:
        raise ReportError(f"{file} is not a report: its JSON is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise ReportError(f"{file} is not a report: {error}") from None


def _printable(value: Any) -> Any:
    """``value`` with every string, keys included, passed through ``printable``."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {printable(key): _printable(item) for key, item in value.items()}
    return value


def check_schema(data: Any, where: str, schema: str, version: int, noun: str) -> dict[str, Any]:
    """``data``, once it names ``schema`` at a version this onnxstyle reads."""
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise ReportError(f"{where} is not an onnxstyle {noun} report (no \"schema\": \"{schema}\")")
    found = data.get("schema_version")
    if not is_int(found) or found > version:
        raise ReportError(f"{where} has schema version {found!r}; this onnxstyle reads up to {version}")
    return data


def check_kind(data: Any, where: str, schema: str, version: int, noun: str, items: str) -> list[Any]:
    """The report's ``items`` list, once its schema, version and size are ones this onnxstyle reads."""
    listed = check_schema(data, where, schema, version, noun).get(items)
    if not isinstance(listed, list):
        raise ReportError(f"{where} is damaged: it has no list of {items}")
    if len(listed) > MAX_ITEMS:
        raise ReportError(f"{where} holds {len(listed):,} {items}; onnxstyle reads reports of up to {MAX_ITEMS:,} {items}")
    return listed


def damaged(where: str, problem: Problem) -> ReportError:
    return ReportError(f"{where} is damaged: {problem}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def figure(owner: str, name: str, value: Any, *, optional: bool = False, positive: bool = False, signed: bool = False, whole: bool = False) -> None:
    """A measured figure: a finite number, non-negative unless ``signed``, above zero if ``positive``."""
    if value is None and optional:
        return
    if value is None:
        raise Problem(f"{owner} has no {name}")
    if not (is_int(value) if whole else is_number(value)):
        raise Problem(f"{owner} has {name} = {_shown(value)}, not {'a whole number' if whole else 'a number'}")
    if not math.isfinite(value):
        raise Problem(f"{owner} has a non-finite {name} ({value})")
    if positive and value <= 0:
        raise Problem(f"{owner} has {name} = {value}; it must be above zero")
    if not signed and value < 0:
        raise Problem(f"{owner} has a negative {name} ({value})")


def series(owner: str, name: str, value: Any, *, signed: bool = False, whole: bool = False) -> list[Any]:
    """A list of figures (see ``figure``)."""
    kind(owner, name, value, list)
    for index, item in enumerate(value):
        figure(owner, f"{name}[{index}]", item, signed=signed, whole=whole)
    return value


def kind(owner: str, name: str, value: Any, expected: type | tuple[type, ...], *, optional: bool = False) -> None:
    """``value`` is of the JSON type the reader expects (``bool`` never passes for a number)."""
    if value is None and optional:
        return
    if value is None:
        raise Problem(f"{owner} has no {name}")
    types = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in types):
        raise Problem(f"{owner} has {name} = {_shown(value)}, not {' or '.join(dict.fromkeys(_TYPE_WORDS.get(item, item.__name__) for item in types))}")


def mapping(owner: str, name: str, value: Any, check: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """A JSON object, each value passed to ``check(key, value)``."""
    kind(owner, name, value, dict)
    for key, item in value.items():
        if check is not None:
            check(key, item)
    return value


def strings(owner: str, name: str, value: Any) -> list[str]:
    kind(owner, name, value, list)
    for index, item in enumerate(value):
        kind(owner, f"{name}[{index}]", item, str)
    return value


def short(value: Any, limit: int = 40) -> str:
    """A value from a report as a label in a message: its text, cut to ``limit`` characters."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TYPE_WORDS = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number", float: "a number"}


def _shown(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def build(cls: type[T], raw: Any, owner: str) -> T:
    """A dataclass from its JSON object, every field checked against its annotation (numbers finite, whole where
    ``int``, nested dataclasses and lists of them in turn): one reader for every results model."""
    if not isinstance(raw, dict):
        raise Problem(f"{owner} is not an object")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in fields(cls):  # type: ignore[arg-type]
        if item.name not in raw:
            if item.default is MISSING and item.default_factory is MISSING:
                raise Problem(f"{owner} has no {item.name}")
            continue
        values[item.name] = _typed(hints[item.name], raw[item.name], owner, item.name)
    return cls(**values)


def _typed(hint: Any, value: Any, owner: str, name: str) -> Any:
    if get_origin(hint) in (Union, UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        hint = options[0]
    if is_dataclass(hint):
        return build(hint, value, f"{owner}'s {name}")  # type: ignore[arg-type]
    if get_origin(hint) is list:
        kind(owner, name, value, list)
        return [_typed(get_args(hint)[0], item, owner, f"{name}[{index}]") for index, item in enumerate(value)]
    if get_origin(hint) is dict or hint is dict:
        return mapping(owner, name, value)
    if hint is int:
        figure(owner, name, value, whole=True, signed=True)
    elif hint is float:
        figure(owner, name, value, signed=True)
        return float(value)
    else:
        kind(owner, name, value, hint)
    return value
