"""Error measures shared by the parity checks: max abs / relative error and the tolerance test."""
from __future__ import annotations

import numpy as np


def errors(got: np.ndarray, ref: np.ndarray) -> dict:
    # in the wider of the two dtypes, at least float32: a float32 difference is within 2**-24 of itself, and
    # at 110M a segment's logits are 260 MB, which float64 copies would double
    diff = np.abs(np.subtract(got, ref, dtype=np.result_type(got, ref, np.float32)))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs, "ref_max": scale,
            "finite": bool(np.isfinite(got).all())}


def within(err: dict, atol: float, rtol: float) -> bool:
    return err["finite"] and err["max_abs"] <= atol + rtol * err["ref_max"]
