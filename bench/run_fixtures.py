"""How far a whole run moves from the legacy one when the arithmetic changes (not a test).

    .venv/bin/python bench/run_fixtures.py        # make bench-runs; TSA_LEGACY_RUN_FIXTURES for another set

For every case of the run-fixture set, three real `tsa train` jobs: the exact path on the MKL
code path the set was made on (equal to the legacy run: the test suite's claim), the exact path
on the other MKL path (the same algorithm, rounded differently in some matrix products), and fast
mode (fused attention; fp32 on CPU). One JSON line per case and variant: best epoch, best and
final validation AUC against the legacy run's.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.equivalence.runs import (
    MKL_PATHS,
    build_mkl_shim,
    find_mkl_path,
    finish,
    prepare_job,
    run_manifest,
    start_job,
)


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        made_on, shim = find_mkl_path(work / "mkl")
        other_name = next(name for name in MKL_PATHS if name != made_on)
        other = build_mkl_shim(other_name, work / "mkl")
        variants = {f"exact ({made_on} MKL path)": ({}, shim), f"exact ({other_name} MKL path)": ({}, other),
                    "fast mode": ({"fast_mode": "true"}, shim)}
        for entry in run_manifest()["cases"]:
            for name, (extra, preload) in variants.items():
                root = work / "jobs" / entry["case_id"]
                shutil.rmtree(root, ignore_errors=True)
                expected = prepare_job(entry, root, **extra)
                run = finish(entry, expected, root, start_job(root, preload))
                if run.returncode:
                    print(json.dumps({"case": entry["case_id"], "variant": name, "error": run.log[-500:]}))
                    continue
                metrics = run.metrics()
                print(json.dumps({
                    "case": entry["case_id"], "variant": name, "best_epoch": metrics["best_epoch"],
                    "legacy_best_epoch": expected["best_epoch"], "best_auc": metrics["best_validation_auc"],
                    "legacy_best_auc": expected["best_validation_auc"],
                    "best_auc_gap": round(abs(metrics["best_validation_auc"] - expected["best_validation_auc"]), 4),
                    "final_auc": metrics["final"]["validation"]["auc"],
                    "legacy_final_auc": expected["files"]["vali"]["auc"],
                }), flush=True)


if __name__ == "__main__":
    main()
