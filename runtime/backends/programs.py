"""The segment-step calls every backend offers, over its own ``_run(program, ids, state)``."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


class SegmentPrograms:
    """``run`` / ``run_last`` and the capabilities of ``protocol.Backend`` for a backend holding ``_step_program``
    (the segment step), ``_last_program`` (the last-token step) and ``_decode_program`` (None where it has none)."""

    _step_program = None
    _last_program = None
    _decode_program = None

    def _run(self, program, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NotImplementedError

    @property
    def has_full(self) -> bool:
        """Whether the artifact has the segment step with all its logits (an ExecuTorch program may carry only the
        last-token and decode methods; a session then takes all logits from decode calls)."""
        return self._step_program is not None

    def run(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The segment step: ``(logits (B, N, V), new state list)``."""
        if self._step_program is None:
            raise InputError("this artifact has no segment program with all logits (an ExecuTorch program exported "
                             "without --full-logits): take all logits from a session's feed, which reads them from "
                             "the decode program, or re-export with --full-logits")
        return self._run(self._step_program, ids, state)

    @property
    def has_last(self) -> bool:
        """Whether the artifact has the segment step with the last token's logits only."""
        return self._last_program is not None

    def run_last(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The segment step with the last token's logits only: ``(logits (B, 1, V), new state list)``."""
        return self._run(self._last_program, ids, state)

    @property
    def has_decode(self) -> bool:
        """Whether the artifact has a decode program."""
        return self._decode_program is not None
