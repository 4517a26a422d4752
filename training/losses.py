"""The training objective: the answer's digits, the key's second mention inside the needle, and a light LM loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks import passkey as P
from .extrapolation import Extrapolation, forward_extrapolated


def train_step_losses(model, batch: P.PasskeyBatch, extra: Extrapolation | None = None,
                      extrapolate_mode: str = "first-order", extrapolate_block: int = 1):
    """Teacher-forced losses of a batch (through the lever's ``extra`` filler when given): the answer's NLL per
    target (B, 6), the needle's second mention (B, 5), the LM loss (scalar) and the answer's exact match (B,)."""
    full = torch.from_numpy(batch.full_ids)  # (B, L + 6)
    inp, tgt = full[:, :-1], full[:, 1:]  # (B, L + 5)
    B, L = batch.ids.shape
    if extra is None:
        logits, _ = model(inp)  # (B, L + 5, V)
    else:
        logits = forward_extrapolated(model, inp, extra, extrapolate_mode, extrapolate_block)  # (B, L + 5, V)
    nll = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")  # (B, L + 5)
    ar5 = torch.arange(P.KEY_DIGITS)
    ans_idx = (L - 1) + torch.arange(P.ANSWER_LEN)  # targets L .. L+5: " " + digits
    ans_nll = nll[:, ans_idx]  # (B, 6)
    kp = torch.from_numpy(batch.key_positions)  # (B, 2)
    needle_idx = kp[:, 1:2] - 1 + ar5[None, :]  # (B, 5): 2nd mention digits as targets
    needle_nll = nll.gather(1, needle_idx)
    mask = torch.ones_like(nll)
    mask.scatter_(1, kp[:, 0:1] - 1 + ar5[None, :], 0.0)  # 1st mention digits are random: no LM loss
    lm = (nll * mask).sum() / mask.sum()
    pred = logits[:, ans_idx[1:]].argmax(-1)  # (B, 5)
    em = (pred == tgt[:, ans_idx[1:]]).all(dim=-1).float()  # (B,)
    return ans_nll, needle_nll, lm, em


def weighted_answer_loss(ans_nll: torch.Tensor, weights) -> torch.Tensor:
    """Mean of the answer NLL (B, 6) with each target (the space, then the digits) weighted; weights normalised
    to mean 1, so all-equal weights give the plain mean."""
    w = torch.as_tensor(weights, dtype=ans_nll.dtype)  # (6,)
    return (ans_nll * (w * (w.numel() / w.sum()))).mean()
