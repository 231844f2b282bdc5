"""Test harness, on PYTHONPATH only in tests/unit/test_stops.py's jobs: slows chosen units of work.

`TSA_SLOW_UNITS="module:Class.method=seconds@from_call;..."` wraps each named function so that,
from its `from_call`-th call on, it prints `SLOW-UNIT <name>` on its first slowed call and sleeps
`seconds` before every call: a phase of a tiny job then lasts long enough to be stopped in, and the
job's own stop checks between units decide how soon it ends. `TSA_SLOW_SETTINGS="module:NAME=value"`
sets module constants (smaller validation chunks, for more units). Nothing else changes.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from collections.abc import Callable
from typing import Any


def _owner_and_name(target: str) -> tuple[Any, str]:
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def _slowed(function: Callable[..., Any], name: str, seconds: float, from_call: int) -> Callable[..., Any]:
    calls = 0

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls >= from_call:
            if calls == from_call:
                print(f"SLOW-UNIT {name}", flush=True)
            time.sleep(seconds)
        return function(*args, **kwargs)
    return wrapper


def _install() -> None:
    for setting in filter(None, os.environ.get("TSA_SLOW_SETTINGS", "").split(";")):
        target, _, value = setting.partition("=")
        owner, name = _owner_and_name(target)
        setattr(owner, name, type(getattr(owner, name))(value))
    for unit in filter(None, os.environ.get("TSA_SLOW_UNITS", "").split(";")):
        target, _, timing = unit.partition("=")
        seconds, _, from_call = timing.partition("@")
        owner, name = _owner_and_name(target)
        setattr(owner, name, _slowed(getattr(owner, name), target, float(seconds), int(from_call or 1)))


if os.environ.get("TSA_SLOW_UNITS") or os.environ.get("TSA_SLOW_SETTINGS"):
    _install()
