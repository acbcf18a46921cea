"""The ``tierlink`` command line: one parser for every command."""

from tierlink.cli.main import main

__all__ = ["main"]
