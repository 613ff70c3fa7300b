"""python -m fuzz TARGET [libFuzzer options, e.g. -runs=10000000 -max_len=4096]

Runs one target of fuzz.targets under atheris (libFuzzer). A finding is written as a
crash-* file; add it to tests/unit/core/test_fuzz.py as a regression case."""
import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
