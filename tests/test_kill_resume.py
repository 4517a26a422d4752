"""A streaming process SIGKILLed at random points resumes from its last snapshot and ends identical."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import ROOT

TOKENS = 150_000


def _run(art, *extra, wait=True):
    cmd = [sys.executable, "-m", "infini_cli", "run", str(art), "--random-tokens", str(TOKENS),
           "--seed", "5", "--chunk", "200", "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _state(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("state/") or k == "pending"}


def test_sigkill_then_resume_is_identical(onnx_artifacts, tmp_path):
    _, art = onnx_artifacts["delta"]
    ref = _run(art, "--save-final", str(tmp_path / "ref.npz"))
    ref_state = _state(tmp_path / "ref.npz")
    rng = random.Random(0)
    trials = []
    for trial in range(3):
        snap, final = tmp_path / f"snap{trial}.npz", tmp_path / f"final{trial}.npz"
        proc = _run(art, "--snapshot", str(snap), "--snapshot-every", "5", wait=False)
        time.sleep(rng.uniform(1.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = proc.returncode == -signal.SIGKILL
        resume = ("--resume", str(snap)) if snap.exists() else ()
        if snap.exists():
            with np.load(snap) as data:  # the snapshot is whole: it loads, and says how far it got
                meta = json.loads(data["meta"].tobytes())
            resumed_at = meta["tokens_consumed"]
        else:
            resumed_at = 0
        out = _run(art, *resume, "--save-final", str(final))
        assert out["tokens"] == TOKENS
        if resumed_at < TOKENS:  # (a run that had already finished leaves nothing to recompute)
            assert out["last_logits_sha256"] == ref["last_logits_sha256"]
        got = _state(final)
        assert got.keys() == ref_state.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], ref_state[k])
        trials.append((killed, resumed_at))
    print(f"\nkill/resume trials (killed, resumed at token): {trials}")
    assert sum(k and r > 0 for k, r in trials) >= 1, f"no trial was killed mid-stream after a snapshot: {trials}"
