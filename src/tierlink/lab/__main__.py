"""``python -m tierlink.lab``."""

import sys

from tierlink.lab.command import main

sys.exit(main())
