"""The lever's check (``training.proxy.extrapolation_check``, scripts/extrapolation_check.py): its streamed probe
equals the model run on the whole prompt; its report adds up; scripts/proxy_score.py reports the training proxy."""
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _env():
    import os
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _check(ckpt, *args, **kw):
    from infini_export import load_checkpoint
    from training.proxy import extrapolation_check
    return extrapolation_check(load_checkpoint(ckpt).eval(), *args, **kw)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from infini_export import InfiniConfig, InfiniTransformer, save_checkpoint
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny")
    save_checkpoint(InfiniTransformer(InfiniConfig.from_name("tiny")).eval(), out)
    return out


def test_streamed_probe_matches_the_whole_prompt(tiny_ckpt):
    from infini_export import load_checkpoint
    from tasks import passkey as P
    L, B, seed = 512, 3, 5
    res = _check(tiny_ckpt, L, B, 64, seed, progress=False)
    assert [r["tokens"] for r in res["real"]] == [80, 272, 512]  # 4, 16 segments (+ the tail), then the full prompt

    # independent reference: the whole prompt and its answer through model.forward, no hand-built state
    model = load_checkpoint(tiny_ckpt).eval()
    batch = P.make_batch(B, L, 0.0, seed)
    full = torch.from_numpy(batch.full_ids)  # (B, L + A)
    with torch.no_grad():
        logits, _ = model(full[:, :-1])  # (B, L + A - 1, V)
    ans = torch.from_numpy(batch.answer_ids)  # (B, A)
    p = logits[:, L - 1:].softmax(-1).gather(-1, ans.unsqueeze(-1)).squeeze(-1)  # (B, A)
    np.testing.assert_allclose(res["real"][-1]["p_correct_per_token"], p.mean(0).numpy(), rtol=1e-4, atol=1e-6)
    em = (logits[:, L - 1:].argmax(-1) == ans).all(1).float().mean().item()
    assert res["real"][-1]["exact_match"] == pytest.approx(em)


def test_extrapolated_state_is_reported_against_the_real_one(tiny_ckpt):
    from training.proxy import extrapolation_table
    res = _check(tiny_ckpt, 512, 2, 64, 5, progress=False)
    ext = res["extrapolated"]
    assert ext["tokens"] == 512 and ext["from_tokens"] == 80
    assert len(res["state_vs_real"]) == 2  # one row per layer
    for row in res["state_vs_real"]:
        assert 0.0 < row["memory_rel_diff"] < 10.0 and 0.0 < row["norm_rel_diff"] < 10.0
        assert 0.0 < row["doubling_memory_rel_diff"] < 10.0 and 0.0 < row["doubling_norm_rel_diff"] < 10.0
    assert res["doubling"]["tokens"] == 512 and res["doubling"]["from_tokens"] == 80
    text = extrapolation_table(res)
    assert "first-order from 80" in text and "doubling (1-segment block) from 80" in text and "layer 1 M" in text
    with pytest.raises(ValueError, match="multiples of the segment length"):
        _check(tiny_ckpt, 500, 2, 64, 5, progress=False)


def test_proxy_score_script_reports_the_training_proxy(tiny_ckpt, tmp_path):
    """scripts/proxy_score.py prints and writes what training.proxy.long_proxy computes for each checkpoint."""
    import json
    import subprocess
    import sys
    out = tmp_path / "proxy.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "proxy_score.py"), str(tiny_ckpt), str(tiny_ckpt),
                           "--length", "1024", "--source", "256", "--block", "3", "--prompts", "2", "--seed", "5",
                           "--json", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and rows[0]["score"] == rows[1]["score"]
    from infini_export import load_checkpoint
    from training.proxy import long_proxy
    ref = long_proxy(load_checkpoint(tiny_ckpt), 1024, 2, 5, source=256, block=3)
    assert rows[0]["score"] == pytest.approx(ref["score"], rel=1e-6) and rows[0]["exact_match"] == ref["exact_match"]
    assert f"| {tiny_ckpt} | {ref['score']:.3f} |" in proc.stdout
    # per answer token (space + 5 digits): the means average to mean_p, every prompt's weakest token is counted
    # once, and the mean of the per-prompt minima cannot exceed the lowest per-token mean
    per, weak = rows[0]["p_per_token"], rows[0]["weakest_token_counts"]
    assert len(per) == len(weak) == 6 and sum(weak) == 2
    assert sum(per) / 6 == pytest.approx(rows[0]["mean_p"], rel=1e-6)
    assert rows[0]["score"] <= min(per) + 1e-7
    assert " / ".join(f"{x:.3f}" for x in per) in proc.stdout


def test_extrapolation_check_script_prints_and_writes_the_check(tiny_ckpt, tmp_path):
    import json
    import subprocess
    import sys
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "extrapolation_check.py"), "--checkpoint", str(tiny_ckpt),
           "--length", "512", "--source", "64", "--prompts", "2", "--seed", "5", "--block", "2", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    want = _check(tiny_ckpt, 512, 2, 64, 5, progress=False, block=2)
    assert got["checkpoint"] == str(tiny_ckpt) and got["doubling"]["block"] == 2
    assert got["doubling"]["p_correct_min_token"] == pytest.approx(want["doubling"]["p_correct_min_token"], rel=1e-6)
    assert [r["tokens"] for r in got["real"]] == [r["tokens"] for r in want["real"]]
    assert "doubling (2-segment block) from 80" in proc.stdout
    bad = subprocess.run(cmd[:4] + ["--length", "500"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "multiples of the segment length" in bad.stderr
