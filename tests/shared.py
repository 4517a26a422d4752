"""Exported artifacts shared by every test of a run: each one exported once, by whichever test process asks first.

Under pytest-xdist every worker has its own session fixtures, so an artifact is built under a file lock in a folder
all the workers of the run see (the run's base temporary folder); the others wait for it and read what it left.
A failed build leaves its traceback, which every later request reports instead of exporting again.
"""
from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

from filelock import FileLock


def shared_root(tmp_path_factory, env: str | None = None) -> Path:
    """The run's shared folder: ``$env`` where that is set (kept between runs), else the base temporary folder
    of the whole run (under xdist each worker's base is a subfolder of it)."""
    if env and os.environ.get(env):
        root = Path(os.environ[env])
    else:
        root = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = root.parent
        root = root / "shared-artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_once(root: Path, name: str, build) -> tuple[Path, dict]:
    """``(root / name, result)``: ``build(folder)`` run once per run for ``name`` and its JSON-able result
    (a dict) kept beside the folder; raises ``RuntimeError`` with the build's traceback if it failed."""
    folder, result = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.is_file():
            try:
                data = {"result": build(folder), "error": None}
            except Exception:  # noqa: BLE001 - recorded for every process that asks
                data = {"result": None, "error": traceback.format_exc()}
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, default=float))
            tmp.replace(result)
        data = json.loads(result.read_text())
    if data["error"]:
        raise RuntimeError(f"building the shared artifact {name} failed:\n{data['error']}")
    return folder, data["result"]


class Lazy:
    """A read-only mapping whose values are made on first access (``make(key)``) and kept."""

    def __init__(self, keys, make):
        self._keys, self._make, self._made = list(keys), make, {}

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._made:
            self._made[key] = self._make(key)
        return self._made[key]

    def __contains__(self, key):
        return key in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def keys(self):
        return list(self._keys)
