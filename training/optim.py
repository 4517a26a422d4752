"""The optimizer (AdamW with a separate learning rate for the gates) and its schedule."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, progress: float, warmup: int, final: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``final`` over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    p = min(1.0, max(0.0, progress))
    return warm * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p)))


def build_optimizer(model: torch.nn.Module, lr: float, gate_lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over three groups (decayed matrices, the rest, the gates ``*.beta`` at ``gate_lr``), each with its
    ``base_lr`` for the schedule."""
    gates, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith(".beta"):
            gates.append(p)
        elif p.dim() == 2 and not name.startswith("embed"):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "base_lr": lr, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base_lr": lr, "name": "no_decay"},
        {"params": gates, "lr": gate_lr, "weight_decay": 0.0, "base_lr": gate_lr, "name": "gates"},
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
