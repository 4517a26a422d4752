"""Checkpoints: ``config.json`` + ``model.safetensors``; nothing is loaded silently."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from runtime.atomic import atomic_write

from .config import InfiniConfig
from .model import InfiniTransformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(model: InfiniTransformer, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (tied weights stored once) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    blob = save(tensors, metadata={"format": "pt"})
    atomic_write(directory / WEIGHTS_FILE, lambda f: f.write(blob))
    model.cfg.to_json(directory / CONFIG_FILE)
    return directory


def load_checkpoint(directory: str | Path, dtype: torch.dtype | None = None) -> InfiniTransformer:
    """Build the model from ``config.json`` and load ``model.safetensors`` strictly.

    Missing, unexpected or mis-shaped tensors raise ``ValueError`` listing every one of them.
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name}; expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = InfiniConfig.from_json(directory / CONFIG_FILE)
    model = InfiniTransformer(cfg)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:  # safetensors raises its own types for corrupt files
        raise ValueError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from exc
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(tensors[k].shape)} vs config {tuple(expected[k])}"
                       for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    if missing or unexpected or misshaped:
        raise ValueError(f"checkpoint {directory} does not match its config.json: missing={missing}, "
                         f"unexpected={unexpected}, misshaped={misshaped}")
    model.load_state_dict(tensors, strict=not cfg.tie_embeddings)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


SOUP_FILE = "soup.json"


def average_checkpoints(directories: list[str | Path], weights: list[float] | None = None) -> InfiniTransformer:
    """A uniform (or ``weights``-weighted) average of checkpoints of one config, parameter by parameter: a "model
    soup" (Wortsman et al., 2022). Meaningful for fine-tunes of a common ancestor, where it smooths the noise of
    the training tail. Every checkpoint is loaded strictly; a config that differs from the first raises
    ``ValueError`` naming the fields. Averaged in float64, returned in the first checkpoint's dtype."""
    if len(directories) < 2:
        raise ValueError(f"averaging needs at least 2 checkpoints, got {len(directories)}")
    weights = [1.0] * len(directories) if weights is None else [float(w) for w in weights]
    if len(weights) != len(directories) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need one non-negative weight per checkpoint with a positive sum, got {weights} for "
                         f"{len(directories)} checkpoints")
    models = [load_checkpoint(d) for d in directories]
    base = models[0].cfg.to_dict()
    for d, m in zip(directories[1:], models[1:]):
        diff = {k: (base[k], v) for k, v in m.cfg.to_dict().items() if base.get(k) != v}
        if diff:
            raise ValueError(f"cannot average {d} with {directories[0]}: their configs differ in {diff}")
    total = sum(weights)
    states = [m.state_dict() for m in models]
    out = models[0]
    avg = {k: (sum(w * s[k].double() for w, s in zip(weights, states)) / total).to(v.dtype)
           for k, v in states[0].items()}
    out.load_state_dict(avg)
    return out.eval()
