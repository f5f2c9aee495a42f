"""How every command line ends: its exit codes, and one line for a mistake a person can fix.

A config or usage error (a key that does not exist, a value out of range, broken YAML, a missing
file) is one line naming the key, the valid choices or the nearest key, and exit 2; a run folder
whose disk is full or read-only is one line saying what to do, and exit 6. `curate`, `stage`,
`train`, `sample`, `eval` and `manifests` all end through `command`.
"""

from __future__ import annotations

import difflib
import errno
import functools
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

EXIT_USAGE = 2
EXIT_FAILED_INPUTS = 3
EXIT_MISSING_WEIGHTS = 4
EXIT_RUN_IN_USE = 5
EXIT_STORAGE = 6

# The run folder's own storage failing: never an input's fault, so never an error row.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

M = TypeVar("M", bound=BaseModel)


class UsageError(Exception):
    """A mistake in the command line or a config file; the message is one line for the user."""


class StorageError(Exception):
    """The run folder cannot be written (disk full, read-only, no permission); one line for the user."""


def read_yaml(path: Path) -> dict:
    """A YAML config file as a mapping, or a UsageError saying what is wrong with it."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UsageError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if data is not None and not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data or {}


def validated(model: type[M], data: dict) -> M:
    """`model.model_validate(data)`, with pydantic's report turned into one line."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise UsageError("; ".join(_describe(model, e) for e in error.errors())) from None


def _describe(model: type[BaseModel], e: dict) -> str:
    where = ".".join(str(part) for part in e["loc"])
    if e["type"] == "extra_forbidden":
        known = _fields(model, e["loc"][:-1])
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1, cutoff=0.6)
        parent = ".".join(str(part) for part in e["loc"][:-1])
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else f"keys here: {', '.join(known)}"
        return f"unknown config key {where} ({hint})"
    got = e.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return f"{where} = {shown}: {e['msg'][0].lower()}{e['msg'][1:]}"


def _fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys valid at `loc` inside `model` (through nested models and optional ones)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        inner = _model_of(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _model_of(a))), None)
    return None


def nearest(name: str, choices: list[str]) -> str:
    """`, did you mean X?` for the closest choice, or the list of them."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else f"choices: {', '.join(choices)}"


def storage_failure(error: BaseException, run: Path | None = None) -> str | None:
    """One line when `error` is the run folder's storage failing (disk full, read-only; with `run`
    given, also no permission under it), saying what to run next; None for any other error."""
    if isinstance(error, StorageError):
        return str(error)
    if not isinstance(error, OSError):
        return None
    where = f" {run}" if run is not None else f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the disk of the run folder{where}; free some space and run the same command again (it resumes; nothing made so far is lost)"
    inside = run is not None and error.filename is not None and Path(error.filename).resolve().is_relative_to(Path(run).resolve())
    if error.errno == errno.EROFS or (inside and error.errno in (errno.EACCES, errno.EPERM)):
        return f"the run folder{where} cannot be written ({error.strerror}); make it writable, or use another with --out"
    return None


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """A command line's `main(argv)`: a UsageError or a storage failure ends it with one line on
    stderr and its exit code; anything else is a bug, and keeps its traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except (StorageError, OSError) as error:
            line = storage_failure(error)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return EXIT_STORAGE

    return wrapped
