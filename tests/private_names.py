"""Checks that the library internals an adapter lists (its ``PRIVATE_NAMES``) still exist.

A name is a dotted path from an importable module (``aioice.ice.Connection._check_list``),
optionally followed by the parameters a callable must still take
(``aioice.ice.Connection.check_incoming(message, addr, protocol)``, ``self`` left out).
Attributes set in ``__init__`` only exist on instances, so the caller gives an instance per
class; attributes declared only as class annotations (dataclass fields, attributes set
later) are found in the annotations.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"(?P<path>[A-Za-z_][\w.]*)(?:\((?P<params>[^)]*)\))?")


def pinned_version(distribution: str) -> str:
    """The exact version pyproject.toml pins ``distribution`` to (``NAME==VERSION``)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements: list[str] = project["dependencies"]
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        if name.strip().lower() == distribution.lower():
            assert sep, f"{distribution} is not pinned exactly in pyproject.toml: {requirement}"
            return version.strip()
    raise AssertionError(f"{distribution} is not a dependency in pyproject.toml")


def installed_version(distribution: str) -> str:
    """The version of ``distribution`` that is installed."""
    return importlib.metadata.version(distribution)


def _attribute(owner: Any, name: str, instances: Mapping[type, object]) -> Any:
    if hasattr(owner, name):
        return getattr(owner, name)
    if isinstance(owner, type):
        instance = instances.get(owner)
        if instance is not None and hasattr(instance, name):
            return getattr(instance, name)
        for klass in owner.__mro__:
            annotations = vars(klass).get("__annotations__", {})
            if name in annotations:
                return annotations[name]
    raise LookupError(f"{name!r} is missing on {owner!r}")


def _resolve(spec: str, instances: Mapping[type, object]) -> None:
    match = _NAME.fullmatch(spec)
    if match is None:
        raise LookupError("not a dotted name")
    parts = match["path"].split(".")
    obj: Any = None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        break
    else:
        raise LookupError(f"module {parts[0]!r} not found")
    for name in parts[i:]:
        obj = _attribute(obj, name, instances)
    if match["params"] is not None:
        expected = [p.strip() for p in match["params"].split(",") if p.strip()]
        got = [p for p in inspect.signature(obj).parameters if p != "self"]
        if got != expected:
            raise LookupError(f"takes ({', '.join(got)}), not ({', '.join(expected)})")


def missing(
    names: Iterable[str], distribution: str, instances: Mapping[type, object]
) -> list[str]:
    """One message per name that does not resolve, naming it and the pinned version."""
    pin, installed = pinned_version(distribution), installed_version(distribution)
    problems = []
    for spec in names:
        try:
            _resolve(spec, instances)
        except LookupError as exc:
            problems.append(
                f"{spec}: {exc} (the adapter is written for {distribution}=={pin}; "
                f"installed: {installed})"
            )
    return problems
