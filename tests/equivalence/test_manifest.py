"""The fixture folders themselves: their files are intact, and every kind is run by a test.

Run: .venv/bin/pytest tests/equivalence/test_manifest.py
An unknown kind fails here instead of being skipped silently: the kinds the manifest lists must
each appear in the parametrisation of a test that runs it.
"""

from __future__ import annotations

import hashlib
from types import ModuleType

import pytest

from tests.equivalence import test_init_and_steps, test_losses, test_modules, test_pipeline, test_training_rules
from tests.equivalence.fixtures import FIXTURE_DIR, manifest
from tests.equivalence.runs import RUN_FIXTURE_DIR, run_manifest

EQUIVALENCE_MODULES: tuple[ModuleType, ...] = (test_modules, test_losses, test_init_and_steps, test_training_rules,
                                               test_pipeline)


def kinds_run_by_tests() -> set[str]:
    """The kinds of the cases the equivalence tests are parametrised with."""
    kinds: set[str] = set()
    for module in EQUIVALENCE_MODULES:
        for name, function in vars(module).items():
            if not name.startswith("test_"):
                continue
            for mark in getattr(function, "pytestmark", []):
                if mark.name == "parametrize" and mark.args[0] == "entry":
                    kinds |= {param.values[0]["kind"] for param in mark.args[1]}
    return kinds


def test_every_kind_in_the_manifest_is_run_by_a_test() -> None:
    kinds = {entry["kind"] for entry in manifest()["cases"]}
    assert kinds <= kinds_run_by_tests(), f"kinds without a test: {sorted(kinds - kinds_run_by_tests())}"


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["case_id"]) for e in manifest()["cases"]])
def test_fixture_file_matches_its_checksum(entry: dict) -> None:
    data = (FIXTURE_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["case_id"]) for e in run_manifest()["cases"]])
def test_run_fixture_files_match_their_checksums(entry: dict) -> None:
    for item in entry["files"]:
        data = (RUN_FIXTURE_DIR / item["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (item["bytes"], item["sha256"]), item["path"]
