"""Error measures shared by the parity checks: max abs / relative error and the tolerance test."""
from __future__ import annotations

import numpy as np


def errors(got: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs, "ref_max": scale,
            "finite": bool(np.isfinite(got).all())}


def within(err: dict, atol: float, rtol: float) -> bool:
    return err["finite"] and err["max_abs"] <= atol + rtol * err["ref_max"]
