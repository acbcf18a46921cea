"""NAT lab tests: ``lab``-marked tests are skipped, with the reason, when the machine cannot
run the lab (not root, or ip/nft/turnserver/dhtnode missing)."""

from __future__ import annotations

import pytest

from tierlink.lab.netns import missing_requirements


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is not None:
        missing = missing_requirements()
        if missing:
            pytest.skip("NAT lab needs " + ", ".join(missing))
