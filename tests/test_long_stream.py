"""CI's version of the very-long-stream run: 200K tokens, eager vs ONNX side by side."""
import pytest

from benchmarks.long_stream import run


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_200k_tokens_stay_finite_and_in_parity(update, tmp_path):
    result = run(200_000, segment_len=128, update=update, points=12, artifact_dir=str(tmp_path), progress=False)
    assert result["finite"]
    assert result["parity_ok"], result["final"]
    assert result["final"]["top1_agree"] >= 0.99
    # z is a running sum of sigma(k) > 0 over random tokens: ||z|| grows linearly with tokens
    assert 0.95 < result["growth_exponent"]["norm.0"] < 1.05, result["growth_exponent"]
    assert result["z_norm_per_token_spread"] < 0.1
    # M never shrinks to nothing, and grows no faster than linearly
    assert 0.3 < result["growth_exponent"]["memory.0"] < 1.05, result["growth_exponent"]
