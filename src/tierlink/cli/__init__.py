"""The ``tierlink`` command line: one parser for every command.

:func:`main` is the console script's entry point. It loads the commands (a few hundred
milliseconds of imports) and reads the command line with Ctrl-C deferred: a SIGINT then is
only noted, and acted on once the start is over (one line, exit status 130), as a later one
is. Raised at once, it could land in code that reports and swallows exceptions (an import's
weak-reference callback prints "Exception ignored ... Traceback" and the command runs on).
"""

from __future__ import annotations

# The C module under ``signal`` (no stubs): ``signal`` itself loads enum (milliseconds),
# widening the moment at the start where a Ctrl-C is not deferred yet.
import _signal  # type: ignore[import-not-found]
import sys

TYPE_CHECKING = False  # typing and collections take milliseconds to load: not at the start
if TYPE_CHECKING:
    from collections.abc import Sequence


class _DeferredInterrupt:
    """Notes SIGINT instead of raising while the commands load; :meth:`end` restores the
    caller's handler and says whether one arrived."""

    def __init__(self) -> None:
        self.arrived = False
        self._previous = _signal.signal(_signal.SIGINT, self._note)
        self._ended = False

    def _note(self, signum: int, frame: object) -> None:
        self.arrived = True

    def end(self) -> bool:
        """Restore the handler in place before (once); True if a SIGINT arrived meanwhile."""
        if not self._ended:
            self._ended = True
            _signal.signal(_signal.SIGINT, self._previous)
        return self.arrived


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tierlink ARGV`` (default: the process's arguments); its exit status. Without
    ``argv`` (the console script) the process ignores Ctrl-C once the command is over; a
    caller that passes ``argv`` keeps its own SIGINT handling."""
    start = _DeferredInterrupt()  # first: everything after it is loaded with Ctrl-C deferred
    from tierlink.cli.exit_codes import EXIT_INTERRUPTED

    try:
        from tierlink.cli.dispatch import execute

        return execute(argv, start.end)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:  # argparse ended the start (--help, a usage error): a Ctrl-C noted
        if start.end():  # meanwhile still ends the command the way it always does
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    finally:
        start.end()
        if argv is None:  # the process's own command is over: a Ctrl-C now changes nothing
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


__all__ = ["main"]
