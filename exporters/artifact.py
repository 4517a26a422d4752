"""The artifact folder both exporters write: program file(s) + manifest.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from infini_export.fingerprint import logits_dtype, model_fingerprint, weights_dtype
from infini_export.manifest import manifest_document
from infini_export.state import StepSpec, flatten_state
from runtime.atomic import atomic_write
from runtime.manifest import MANIFEST_FILE, Manifest, sha256_file

INITIAL_STATE_FILE = "initial_state.npz"


def _file_entry(directory: Path, rel: str) -> dict:
    path = directory / rel
    return {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _initial_state(module: torch.nn.Module, spec: StepSpec, directory: Path, files: dict):
    """"zeros", or (for a module that starts from a non-zero state) the state shipped as a file."""
    init = flatten_state(module.init_state(1))
    if all(not t.any() for t in init):
        return "zeros"
    arrays = {s.name: t.numpy() for s, t in zip(spec.state, init)}
    atomic_write(directory / INITIAL_STATE_FILE, lambda f: np.savez(f, **arrays))
    files["initial_state"] = _file_entry(directory, INITIAL_STATE_FILE)
    return {"file": "initial_state"}


def build_manifest(module: torch.nn.Module, spec: StepSpec, *, backend: str, program: dict, files: dict,
                   directory: Path, max_batch: int, exporter: dict | None = None,
                   quantization: str | None = None, decode_program: dict | None = None,
                   shared_weights: dict | None = None, last_program: dict | None = None) -> dict:
    """The manifest document of an exported module; ``files`` maps key -> path inside ``directory``.

    ``decode_program`` (where the module has the decode protocol and it was exported) adds the ``decode``
    section, ``last_program`` (where ``module.step_last`` was exported) the ``last_logits`` section."""
    entries = {key: _file_entry(directory, rel) for key, rel in files.items()}
    initial = _initial_state(module, spec, directory, entries)
    return manifest_document(
        spec, backend=backend, program=program, fingerprint=model_fingerprint(module, spec), max_batch=max_batch,
        logits_dtype=logits_dtype(module), weights_dtype=weights_dtype(module), files=entries,
        initial_state=initial, quantization=quantization, exporter=exporter,
        decode_spec=module.decode_spec() if decode_program is not None else None, decode_program=decode_program,
        shared_weights=shared_weights, last_program=last_program)


def strict_json(value):
    """``value`` with every non-finite float replaced by None: JSON has no Infinity or NaN (JavaScript's
    ``JSON.parse`` rejects them), so an unbounded tolerance or an error that overflowed is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_manifest(directory: Path, data: dict) -> Path:
    """Atomic write of manifest.json as strict JSON (checked by the runtime's own parser first)."""
    Manifest.from_dict(data, directory)
    text = (json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n").encode()
    return atomic_write(directory / MANIFEST_FILE, lambda f: f.write(text))
