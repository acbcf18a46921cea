"""The exit statuses of the ``tierlink`` commands (a module of its own so the entry point
uses them without loading the commands)."""

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
