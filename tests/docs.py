"""The documentation's code blocks, for the tests that run them (the docs show what is tested)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def python_block(page: str, containing: str) -> str:
    """The one ```python block of `docs/<page>` whose text holds `containing`."""
    blocks = re.findall(r"^```python\n(.*?)^```$", (DOCS / page).read_text(), flags=re.M | re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"docs/{page}: {len(found)} python blocks hold {containing!r}, expected 1"
    return found[0]
