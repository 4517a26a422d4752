"""The eager model behind the runtime's session protocol, in torch: what training evaluates through."""
from __future__ import annotations

import numpy as np
import torch


class EagerSession:
    """``reset(batch_size)``, ``stream(ids (B, T)) -> last logits (B, V)`` and ``feed(ids) -> logits (B, T, V)``
    over ``model.step``, like ``runtime.InfiniSession``: any length, state kept across calls.

    Keeps the state committed at the last full-segment boundary plus the pending partial segment's tokens; each
    call re-runs pending + new tokens, commits every complete segment and runs the trailing partial one (unpadded)
    without committing. The model should be in eval mode.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 1):
        self.model = model
        self.segment_len = model.cfg.segment_len
        self.reset(batch_size)

    def reset(self, batch_size: int | None = None) -> None:
        """Back to the initial state, optionally with another batch size."""
        self.batch_size = self.batch_size if batch_size is None else int(batch_size)
        self.state = None  # created on the first call
        self.pending = torch.zeros((self.batch_size, 0), dtype=torch.int64)  # (B, r) tokens of the open segment
        self.tokens_consumed = 0

    @torch.inference_mode()
    def _advance(self, ids, keep_all: bool) -> torch.Tensor:
        new = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if new.dim() != 2 or new.shape[1] < 1 or new.shape[0] != self.batch_size:
            raise ValueError(f"ids must be (batch={self.batch_size}, time >= 1) token ids, got shape "
                             f"{tuple(new.shape)} (reset(batch_size) to change the batch)")
        if self.state is None:
            self.state = self.model.init_state(self.batch_size)
        N = self.segment_len
        allt = torch.cat([self.pending, new], dim=1)
        outs = []
        n_full = allt.shape[1] // N
        for s in range(n_full):
            logits, self.state = self.model.step(allt[:, s * N:(s + 1) * N], self.state)
            outs.append(logits if keep_all else logits[:, -1:])
        rest = allt[:, n_full * N:]
        if rest.shape[1]:
            logits, _ = self.model.step(rest, self.state)  # not committed: the segment is incomplete
            outs.append(logits if keep_all else logits[:, -1:])
        self.pending = rest
        self.tokens_consumed += new.shape[1]
        return torch.cat(outs, dim=1)[:, -new.shape[1]:] if keep_all else outs[-1][:, -1]

    def feed(self, ids) -> np.ndarray:
        """Stream ``ids`` (B, T); return their logits (B, T, V) float32."""
        return self._advance(ids, keep_all=True).float().numpy()

    def stream(self, ids) -> np.ndarray:
        """Like :meth:`feed` but keeps only the last token's logits (B, V): memory independent of len(ids)."""
        return self._advance(ids, keep_all=False).float().numpy()
