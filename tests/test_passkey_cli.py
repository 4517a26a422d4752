"""``infini-export passkey`` end to end on an exported model: its per-prompt answers, with the memory on and off,
equal an independent greedy decode by the eager model (whole prefix recomputed per token; the control from each
token's own segment only), and its JSON, table and plot agree with those answers."""
import json

import numpy as np
import pytest
import torch

from tasks import passkey as pk
from tests.cli import run_cli

LENGTHS, DEPTHS, TRIALS, SEED = [256, 301], [0.0, 1.0], 2, 7


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from exporters.pipeline import export_artifact
    from infini_export import InfiniConfig, InfiniTransformer
    torch.manual_seed(3)
    model = InfiniTransformer(InfiniConfig.from_name("tiny")).eval()
    with torch.no_grad():  # make the memory read decide the answers: gates near 1, a loud attention output
        for block in model.blocks:
            block.attn.beta.fill_(3.0)
            block.attn.wo.weight.mul_(30.0)
    tmp = tmp_path_factory.mktemp("pk")
    export_artifact(model, tmp / "onnx", "onnx", parity_segments=4, progress=False, log=None)
    proc = run_cli("passkey", tmp / "onnx", "--lengths", ",".join(map(str, LENGTHS)),
                   "--depths", ",".join(map(str, DEPTHS)), "--trials", TRIALS, "--seed", SEED, "--out", tmp / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return model, json.loads((tmp / "out" / "passkey.json").read_text()), proc.stdout, tmp / "out"


def _greedy(model, ids: np.ndarray, memory: bool) -> str:
    """Eager greedy answer; memory off: each token sees only its own segment, from a zero state."""
    N, seq = model.cfg.segment_len, list(ids)
    for _ in range(pk.ANSWER_LEN):
        lo = 0 if memory else (len(seq) - 1) // N * N
        with torch.no_grad():
            logits, _ = model(torch.tensor([seq[lo:]]))  # (1, T, V)
        seq.append(int(logits[0, -1].argmax()))
    return pk.decode(seq[len(ids):])


def test_answers_equal_an_eager_greedy_decode(run):
    model, result, _, _ = run
    assert [r["length"] for r in result["rows"]] == LENGTHS and result["trials"] == TRIALS
    differs = 0
    for li, row in enumerate(result["rows"]):
        for di, depth in enumerate(DEPTHS):
            cell = row["depths"][str(depth)]
            rng = np.random.default_rng([SEED, li, di])  # the documented seeding: same prompts every run
            assert cell["keys"] == [str(k) for k in rng.integers(10000, 100000, size=TRIALS)]
            for key, got, got_off in zip(cell["keys"], cell["answers"], cell["control_answers"]):
                ids = pk.make_sample(row["length"], depth, key=key).ids
                assert got == _greedy(model, ids, memory=True)
                assert got_off == _greedy(model, ids, memory=False)
            assert cell["correct"] == sum(pk.is_correct(a, k) for a, k in zip(cell["answers"], cell["keys"]))
            assert cell["accuracy"] == pytest.approx(cell["correct"] / TRIALS)
            differs += sum(a != b for a, b in zip(cell["answers"], cell["control_answers"]))
            assert cell["control_accuracy"] == pytest.approx(
                np.mean([pk.is_correct(a, k) for a, k in zip(cell["control_answers"], cell["keys"])]))
    assert differs > 0  # the memory changes answers here, so a control that kept it would be caught


def test_table_and_plot_are_written(run):
    _, result, stdout, out = run
    assert "accuracy % (start / end)" in stdout and f"{LENGTHS[1]:>10,} |" in stdout
    assert (out / "passkey.png").stat().st_size > 10_000
    assert all(r["peak_rss_mb"] > 0 and r["tokens_per_second"] > 0 for r in result["rows"])
    assert result["backend"] == "onnxruntime"


def _passkey(args, tmp):
    return run_cli("passkey", *args)


def test_replay_reruns_the_recorded_prompts(run, tmp_path):
    """--replay re-runs a result's exact prompts: the same keys give the same answers; --lengths filters the
    cells and --misses-only keeps the prompts that run got wrong; two files concatenate cell by cell."""
    _, result, _, out = run
    artifact = out.parent / "onnx"
    recorded = out / "passkey.json"
    proc = _passkey([artifact, "--replay", recorded, "--replay", recorded, "--lengths", LENGTHS[1],
                     "--no-control", "--out", tmp_path / "all"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads((tmp_path / "all" / "passkey.json").read_text())
    assert [r["length"] for r in got["rows"]] == [LENGTHS[1]] and got["replayed"] == [str(recorded)] * 2
    for depth in DEPTHS:
        want = result["rows"][1]["depths"][str(depth)]
        cell = got["rows"][0]["depths"][str(depth)]
        assert cell["keys"] == want["keys"] * 2 and cell["answers"] == want["answers"] * 2
        assert "control_answers" not in cell

    missed = {(r["length"], d): [k for k, a in zip(e["keys"], e["answers"]) if not pk.is_correct(a, k)]
              for r in result["rows"] for d, e in r["depths"].items()}
    assert any(missed.values()), "the fixture's model should miss some prompts"
    proc = _passkey([artifact, "--replay", recorded, "--replay", recorded, "--misses-only", "--out", tmp_path / "miss"],
                    tmp_path)  # misses of two runs: their union, each prompt once
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads((tmp_path / "miss" / "passkey.json").read_text())
    seen = {(r["length"], d): e for r in got["rows"] for d, e in r["depths"].items()}
    assert set(seen) == {cell for cell, keys in missed.items() if keys}
    for cell, e in seen.items():
        assert e["keys"] == missed[cell] and e["correct"] == 0 and "control_answers" in e
    assert f"replaying {sum(map(len, missed.values()))} missed prompts" in proc.stdout


def test_replay_refuses_what_it_cannot_replay(run, tmp_path):
    _, _, _, out = run
    artifact = out.parent / "onnx"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"length": 256, "depths": {"0.0": {"keys": ["12"], "answers": [" 12"]}}}]}))
    proc = _passkey([artifact, "--replay", bad], tmp_path)
    assert proc.returncode != 0 and "not a passkey.json result" in proc.stderr and "5-digit" in proc.stderr
    proc = _passkey([artifact, "--replay", out / "passkey.json", "--lengths", "4K"], tmp_path)
    assert proc.returncode != 0 and "no prompt left to replay" in proc.stderr
    proc = _passkey([artifact, "--misses-only"], tmp_path)
    assert proc.returncode != 0 and "--replay" in proc.stderr
