"""Fuzz targets for the core's parsers, each checked against a library oracle.

Every target takes arbitrary bytes and raises AssertionError on a crash-worthy finding:
an exception other than the parser's own refusal, or a disagreement with the oracle.
`tests/unit/core/test_fuzz.py` runs them briefly under hypothesis (in `make test`);
`make fuzz` runs them long under atheris (`python -m fuzz TARGET -runs=N`).
"""
