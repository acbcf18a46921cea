"""The ``tierlink`` command line: one parser for every command.

:func:`main` is the console script's entry point. It loads the commands (a few hundred
milliseconds of imports) inside its own Ctrl-C handling, so an interrupt at any moment of
the start ends the command the way a later one does: one line, exit status 130.
"""

from __future__ import annotations

import sys

from tierlink.cli.exit_codes import EXIT_INTERRUPTED

TYPE_CHECKING = False  # typing and collections take milliseconds to load: not at the start
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tierlink ARGV`` (default: the process's arguments); its exit status. Without
    ``argv`` (the console script) the process ignores Ctrl-C once the command is over; a
    caller that passes ``argv`` keeps its own SIGINT handling."""
    try:
        from tierlink.cli.dispatch import execute

        return execute(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if argv is None:  # the process's own command is over: a Ctrl-C now changes nothing
            import signal  # loaded here: its import (enum) would widen the start's window

            signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = ["main"]
