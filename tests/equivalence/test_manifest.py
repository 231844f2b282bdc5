"""The fixture folder itself: its files are intact, and every kind in it is covered by a test.

Run: .venv/bin/pytest tests/equivalence/test_manifest.py
An unknown kind fails here instead of being skipped silently.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.equivalence.fixtures import FIXTURE_DIR, cases, manifest

# kind -> the test module that runs its cases
COVERED_KINDS = {
    "component": "test_modules", "model": "test_modules", "loss": "test_losses", "init": "test_init_and_steps",
    "train_step": "test_init_and_steps", "optim": "test_training_rules", "metric": "test_training_rules",
    "early_stopping": "test_training_rules", "pipeline": "test_pipeline",
}


def test_every_kind_in_the_manifest_is_covered() -> None:
    kinds = {entry["kind"] for entry in manifest()["cases"]}
    assert kinds <= set(COVERED_KINDS), f"kinds without a test: {sorted(kinds - set(COVERED_KINDS))}"


@pytest.mark.parametrize("entry", cases(*COVERED_KINDS))
def test_fixture_file_matches_its_checksum(entry: dict) -> None:
    data = (FIXTURE_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
