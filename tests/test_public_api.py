"""The public API is reachable from the package top, typed, and cheap to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tierlink


def test_every_public_name_resolves() -> None:
    for name in tierlink.__all__:
        assert getattr(tierlink, name) is not None, name


def test_lazy_names_are_the_real_classes() -> None:
    from tierlink.node import Node, NodeConfig
    from tierlink.transport.connection import Connection

    assert tierlink.Node is Node
    assert tierlink.NodeConfig is NodeConfig
    assert tierlink.Connection is Connection


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        tierlink.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("tierlink.NoSuchThing resolved")


def test_import_does_not_load_the_node_or_quic() -> None:
    code = ("import sys, tierlink; "
            "print(sorted(m for m in sys.modules if m.startswith(('aioquic', 'aioice', "
            "'tierlink.node', 'tierlink.transport'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_package_ships_a_py_typed_marker() -> None:
    assert (Path(tierlink.__file__).parent / "py.typed").is_file()
