"""The browser for the dashboard tests: one headless Chromium per module, or a skip that
says what is missing."""

from __future__ import annotations

import pytest

from support.browser import Browser, chromium_missing


@pytest.fixture(scope="module")
def browser():
    missing = chromium_missing()
    if missing:
        pytest.skip(f"no browser for the dashboard tests: {missing}")
    b = Browser()
    yield b
    b.close()
