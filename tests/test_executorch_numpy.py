"""The torch-free ExecuTorch engine (``executorch-numpy-runtime``, wheels for Python >= 3.12 only) against the
pybindings engine: the tiny preset's programs exported here, run in a Python 3.12 environment that holds the
runtime's wheel with its ``[executorch]`` extra (``make venv312``, part of ``make test``; ``INFINI_PY312`` names
another python), in a process without torch; logits and state compared.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import InfiniSession
from tests.et_artifacts import FP32, INT8_JOB, PORTABLE, get

PY312_ENV = "INFINI_PY312"
JOBS = (("delta", FP32), ("delta", PORTABLE), INT8_JOB)
# in the 3.12 environment: each artifact through the numpy engine, its logits and final state saved
CHILD = """
import sys
sys.modules["torch"] = None  # any "import torch" fails
import numpy as np
from runtime import InfiniSession
ids = np.load(sys.argv[1])
for i, art in enumerate(sys.argv[2:]):
    s = InfiniSession.open(art, engine="numpy")
    assert s.backend.engine.name == "numpy", s.backend.engine.name
    np.savez(f"out{i}.npz", logits=s.feed(ids), **{"state/" + k: v for k, v in s.state.items()})
import runtime
print(runtime.__file__)
"""


def numpy_engine_python() -> Path:
    """The 3.12 environment's python; skips (fails under CI, where ``make test`` makes it) when it is missing."""
    py = Path(os.environ.get(PY312_ENV) or Path(sys.prefix) / "py312" / "bin" / "python")
    if not py.is_file():
        why = (f"no Python 3.12 environment with infini-runtime[executorch] at {py}: `make venv312` makes one "
               "(executorch-numpy-runtime has wheels for Python >= 3.12 only)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return py


def test_numpy_engine_matches_pybindings(et_artifacts, tmp_path):
    py = numpy_engine_python()
    ids = np.random.default_rng(9).integers(0, 256, 300)  # 18 segments + 12 tokens through the decode program
    np.save(tmp_path / "ids.npy", ids)
    arts = [get(et_artifacts, job)[1] for job in JOBS]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    res = subprocess.run([str(py), "-c", CHILD, str(tmp_path / "ids.npy"), *map(str, arts)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "site-packages" in res.stdout, f"the runtime did not come from the installed wheel: {res.stdout}"
    for i, (job, art) in enumerate(zip(JOBS, arts)):
        ref = InfiniSession.open(art, engine="pybindings")
        logits = ref.feed(ids)
        got = np.load(tmp_path / f"out{i}.npz")
        np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-5, err_msg=str(job))
        for name, value in ref.state.items():
            np.testing.assert_allclose(got["state/" + name], value, rtol=1e-5, atol=1e-5, err_msg=f"{job} {name}")
