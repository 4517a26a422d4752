"""The artifact folder both exporters write: program file(s) + manifest.json."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from infini_export.fingerprint import logits_dtype, model_fingerprint, weights_dtype
from infini_export.manifest import manifest_document
from infini_export.state import StepSpec, flatten_state
from runtime.atomic import atomic_write
from runtime.manifest import Manifest, sha256_file

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
                   shared_weights: dict | None = None, last_program: dict | None = None,
                   decode_form: str | None = None, decode_max_chunk: int | None = None,
                   embedding_lookup: dict | None = None, memory: dict | None = None) -> Manifest:
    """The manifest of an exported module (typed, in ``directory``, not yet written); ``files`` maps key -> path
    inside ``directory``.

    ``decode_program`` (where the module has the decode protocol and it was exported, in ``decode_form``, at most
    ``decode_max_chunk`` tokens a call) adds the ``decode`` section, ``last_program`` (where ``module.step_last``
    was exported) the ``last_logits`` section; ``embedding_lookup`` and ``memory`` what was measured of the
    programs."""
    entries = {key: _file_entry(directory, rel) for key, rel in files.items()}
    initial = _initial_state(module, spec, directory, entries)
    return manifest_document(
        spec, backend=backend, program=program, fingerprint=model_fingerprint(module, spec), max_batch=max_batch,
        logits_dtype=logits_dtype(module), weights_dtype=weights_dtype(module), files=entries,
        initial_state=initial, quantization=quantization, exporter=exporter,
        decode_spec=None if decode_program is None else
        module.decode_spec(decode_form or "rows"),
        decode_program=decode_program, decode_max_chunk=decode_max_chunk, decode_form=decode_form,
        shared_weights=shared_weights, last_program=last_program, embedding_lookup=embedding_lookup, memory=memory,
        directory=directory)
