"""Checkpoints: ``config.json`` + ``model.safetensors``; nothing is loaded silently."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_FILE)
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
