"""``python -m tierlink.cli``: the same as the ``tierlink`` command."""

import sys

from tierlink.cli import main

sys.exit(main())
