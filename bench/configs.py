"""Generated configuration files: templates in bench/templates/ filled in for one run.

Placeholders are `{{name}}`; every one must be given a value, so a template and the code
that fills it cannot drift apart silently. Files are written into the run's work
directory (and copied next to the results by the runner).
"""
from __future__ import annotations

import re
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(template: str, **values: object) -> str:
    text = (TEMPLATES / template).read_text()
    missing = sorted(set(PLACEHOLDER.findall(text)) - values.keys())
    if missing:
        raise KeyError(f"{template}: no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def write_config(path: Path, template: str, **values: object) -> Path:
    path.write_text(render(template, **values))
    return path
