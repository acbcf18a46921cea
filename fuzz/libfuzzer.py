"""One target under atheris (coverage-guided libFuzzer): ``python -m fuzz.libfuzzer NAME RUNS OUT``.

tierlink is imported under atheris' instrumentation, so libFuzzer keeps the inputs that
reach new branches of the parsers and mutates those further. The target never raises
(findings are recorded, not crashes), so the run always lasts ``RUNS`` inputs; the stats
are written to ``OUT`` (JSON) every 1000 inputs and at the end. Run by ``python -m fuzz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["tierlink"]):
    from fuzz import targets
    from fuzz.harness import Stats, run_one


def main() -> None:
    """Fuzz one target for a number of inputs, writing its stats."""
    name, runs, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    target = targets.TARGETS[name]
    stats = Stats(name)

    def write() -> None:
        out.write_text(json.dumps(stats.to_json()))

    def one_input(data: bytes) -> None:
        run_one(target, data, stats)
        if stats.inputs % 1000 == 0 or stats.inputs >= runs:
            write()
        if stats.inputs >= runs:
            targets.cleanup()

    write()
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=4096", "-print_final_stats=1"],
                  one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
