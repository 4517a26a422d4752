"""scripts/extrapolation_check.py: its streamed probe equals the model run on the whole prompt; its report adds up."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load_script():
    spec = importlib.util.spec_from_file_location("extrapolation_check", ROOT / "scripts" / "extrapolation_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from infini_export import InfiniConfig, InfiniTransformer, save_checkpoint
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny")
    save_checkpoint(InfiniTransformer(InfiniConfig.from_name("tiny")).eval(), out)
    return out


def test_streamed_probe_matches_the_whole_prompt(tiny_ckpt):
    from infini_export import load_checkpoint
    from infini_export.tasks import passkey as P
    mod = _load_script()
    L, B, seed = 512, 3, 5
    res = mod.run(str(tiny_ckpt), L, B, 64, seed, progress=False)
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
    mod = _load_script()
    res = mod.run(str(tiny_ckpt), 512, 2, 64, 5, progress=False)
    ext = res["extrapolated"]
    assert ext["tokens"] == 512 and ext["from_tokens"] == 80
    assert len(res["state_vs_real"]) == 2  # one row per layer
    for row in res["state_vs_real"]:
        assert 0.0 < row["memory_rel_diff"] < 10.0 and 0.0 < row["norm_rel_diff"] < 10.0
        assert 0.0 < row["doubling_memory_rel_diff"] < 10.0 and 0.0 < row["doubling_norm_rel_diff"] < 10.0
    assert res["doubling"]["tokens"] == 512 and res["doubling"]["from_tokens"] == 80
    text = mod.report(res)
    assert "first-order from 80" in text and "doubling (1-segment block) from 80" in text and "layer 1 M" in text
    with pytest.raises(SystemExit, match="multiples of the segment length"):
        mod.run(str(tiny_ckpt), 500, 2, 64, 5, progress=False)


def test_proxy_score_script_reports_the_training_proxy(tiny_ckpt, tmp_path):
    """scripts/proxy_score.py prints and writes what train_passkey.long_proxy computes for each checkpoint."""
    import json
    import subprocess
    import sys
    out = tmp_path / "proxy.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "proxy_score.py"), str(tiny_ckpt), str(tiny_ckpt),
                           "--length", "1024", "--source", "256", "--block", "3", "--prompts", "2", "--seed", "5",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and rows[0]["score"] == rows[1]["score"]
    from infini_export import load_checkpoint
    spec = importlib.util.spec_from_file_location("train_passkey", ROOT / "scripts" / "train_passkey.py")
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    ref = tp.long_proxy(load_checkpoint(tiny_ckpt), 1024, 2, 5, source=256, block=3)
    assert rows[0]["score"] == pytest.approx(ref["score"], rel=1e-6) and rows[0]["exact_match"] == ref["exact_match"]
    assert f"| {tiny_ckpt} | {ref['score']:.3f} |" in proc.stdout
    # per answer token (space + 5 digits): the means average to mean_p, every prompt's weakest token is counted
    # once, and the mean of the per-prompt minima cannot exceed the lowest per-token mean
    per, weak = rows[0]["p_per_token"], rows[0]["weakest_token_counts"]
    assert len(per) == len(weak) == 6 and sum(weak) == 2
    assert sum(per) / 6 == pytest.approx(rows[0]["mean_p"], rel=1e-6)
    assert rows[0]["score"] <= min(per) + 1e-7
    assert " / ".join(f"{x:.3f}" for x in per) in proc.stdout
