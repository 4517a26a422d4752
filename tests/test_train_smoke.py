"""The passkey training command line (run in this process: ``tests.cli.run_training``) and the training library:
a 2-step --quick run writes a loadable checkpoint and a report; the eager session streams; the state-extrapolation
lever, the proxy and the losses."""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from tests.cli import run_training


def _library():
    """The training library's modules, by the names the tests use."""
    from types import SimpleNamespace

    from infini_export.eager import eager_session
    from training import extrapolation, losses, proxy
    return SimpleNamespace(EagerSession=eager_session, extrapolation_plan=extrapolation.extrapolation_plan,
                           forward_extrapolated=extrapolation.forward_extrapolated,
                           filler_block=extrapolation.filler_block, grow_filler=extrapolation.grow_filler,
                           long_proxy=proxy.long_proxy, weighted_answer_loss=losses.weighted_answer_loss)


def test_quick_training_run(tmp_path):
    out = tmp_path / "ckpt"
    proc = run_training("--quick", "--preset", "tiny", "--steps", "2", "--out", out, "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step" in proc.stdout and "held-out EM" in proc.stdout

    from infini_export import InfiniConfig, load_checkpoint
    model = load_checkpoint(out)
    assert model.cfg == InfiniConfig.from_name("tiny")
    report = json.loads((out / "train_report.json").read_text())
    assert report["steps"] == 2 and report["tokens"] > 0
    assert report["preset"] == "tiny" and report["heldout_em"] is not None
    assert report["history"] and report["evals"]
    assert (out / "train_report.png").stat().st_size > 0
    assert (out / "train_state.pt").is_file()  # for --resume; never committed


def test_eager_session_streams_like_the_full_model():
    from infini_export import InfiniConfig, InfiniTransformer
    mod = _library()
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny")).eval()  # segment_len 16
    ids = torch.randint(0, 256, (2, 75))
    with torch.no_grad():
        ref, _ = model(ids)
    session = mod.EagerSession(model, batch_size=2)  # the one eager session: the runtime's, over the eager model
    pieces, start = [], 0
    for n in (5, 11, 16, 1, 30, 12):  # crosses segment boundaries at every possible phase
        pieces.append(session.feed(ids[:, start:start + n].numpy()))
        start += n
    got = np.concatenate(pieces, axis=1)
    assert got.shape == (2, 75, 256)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)
    assert session.tokens_consumed == 75
    session.reset()
    np.testing.assert_allclose(session.feed(ids[:, :20].numpy()), ref[:, :20].numpy(), rtol=1e-4, atol=1e-4)
    session.reset(1)  # the runtime's protocol: another batch size, last logits only
    np.testing.assert_allclose(session.stream(ids[:1, :37].numpy()), ref[:1, 36].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="batch size 2, the session.s state has batch size 1"):
        session.stream(ids[:, 37:40].numpy())


def test_state_extrapolation_lever():
    """--extrapolate-frac: k = 0 is the plain forward; k > 0 changes nothing before the answer's segment and
    changes what the answer reads."""
    mod = _library()
    from infini_export import InfiniConfig, InfiniTransformer
    from tasks import passkey as P
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", update="linear")).eval()
    N = model.cfg.segment_len
    rng = np.random.default_rng(0)
    batch = P.make_batch(4, P.min_length() + 12 * N, 0.0, rng)  # key right after the instruction
    plan = mod.extrapolation_plan(rng, batch, N, frac=1.0, max_tokens=64 * N)
    s_a = (batch.ids.shape[1] - 1) // N
    assert plan is not None and (plan.k >= 1).all() and (plan.k <= 64).all()
    assert (plan.at == s_a).all() and (plan.src == s_a - 2).all()
    assert mod.extrapolation_plan(rng, batch, N, frac=0.0, max_tokens=64 * N) is None
    inp = torch.from_numpy(batch.full_ids)[:, :-1]
    with torch.no_grad():
        ref, _ = model(inp)
        same = mod.forward_extrapolated(model, inp, dataclasses.replace(plan, k=np.zeros(4)))
        ext = mod.forward_extrapolated(model, inp, plan)
    assert torch.equal(same, ref)
    assert torch.equal(ext[:, :s_a * N], ref[:, :s_a * N])  # before the answer's segment: untouched
    assert not torch.allclose(ext[:, s_a * N:], ref[:, s_a * N:])  # the answer reads a diluted memory


def _needle_at_end(update: str):
    """A tiny model, 3 prompts with the needle at the end, and a before-the-needle extrapolation plan for them."""
    mod = _library()
    from infini_export import InfiniConfig, InfiniTransformer
    from tasks import passkey as P
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", update=update)).eval()
    N = model.cfg.segment_len
    rng = np.random.default_rng(1)
    batch = P.make_batch(3, P.min_length() + 12 * N, 1.0, rng)  # needle at the end
    plan = mod.extrapolation_plan(rng, batch, N, frac=1.0, max_tokens=64 * N, before_frac=1.0)
    return mod, model, N, batch, plan, batch.needle_start // N


def test_extrapolation_before_the_needle_is_exact_for_the_linear_rule():
    """--extrapolate-before-needle: a needle in the last segments gets its extra filler before the needle's
    segment; for the linear rule, k = 2 extra segments equals feeding that filler segment twice more."""
    mod, model, N, batch, plan, n0 = _needle_at_end("linear")
    assert plan is not None and (plan.at == n0).all() and (plan.src == n0 - 1).all()
    plan = dataclasses.replace(plan, k=np.full(3, 2.0))
    inp = torch.from_numpy(batch.full_ids)[:, :-1]
    with torch.no_grad():
        ext = mod.forward_extrapolated(model, inp, plan)
        for b in range(3):  # reference: the same row with segment n0 - 1 repeated twice more
            a = int(n0[b]) * N
            row = inp[b:b + 1]
            rep = torch.cat([row[:, :a], row[:, a - N:a], row[:, a - N:a], row[:, a:]], dim=1)
            want, _ = model(rep)
            # (the repeated segments shift RoPE positions only inside their own segments: none reach later ones)
            torch.testing.assert_close(ext[b, a:], want[0, a + 2 * N:], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ext[b, :a], want[0, :a], rtol=1e-5, atol=1e-5)  # batch 3 vs batch 1 rounding


def test_doubling_extrapolation_is_exact_for_three_passes_of_the_delta_rule():
    """--extrapolate-mode doubling re-runs the filler segment from the growing state: for k <= 3 its steps are
    single passes, so k = 3 must equal feeding that filler segment three more times, with the delta rule (where
    the first-order lever is only an approximation); a row with k = 0 is the plain forward."""
    mod, model, N, batch, plan, n0 = _needle_at_end("delta")
    plan = dataclasses.replace(plan, k=np.array([3.0, 3.0, 0.0]))
    inp = torch.from_numpy(batch.full_ids)[:, :-1]
    with torch.no_grad():
        ext = mod.forward_extrapolated(model, inp, plan, mode="doubling")
        first = mod.forward_extrapolated(model, inp, plan, mode="first-order")
        ref, _ = model(inp)
        torch.testing.assert_close(ext[2], ref[2], rtol=1e-5, atol=1e-5)
        for b in range(2):
            a = int(n0[b]) * N
            row = inp[b:b + 1]
            rep = torch.cat([row[:, :a]] + [row[:, a - N:a]] * 3 + [row[:, a:]], dim=1)
            want, _ = model(rep)
            torch.testing.assert_close(ext[b, a:], want[0, a + 3 * N:], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(first[b, a:], want[0, a + 3 * N:], rtol=1e-4, atol=1e-4)  # first-order is not
    # fractional and large k: the multipliers add up to k, in 1 + ceil(log2 k) segment runs
    state = model.init_state(2)
    filler = inp[:2, :N]
    calls = {"n": 0}
    real_step = model.step

    def counting_step(*a, **kw):
        calls["n"] += 1
        return real_step(*a, **kw)
    model.step = counting_step
    grown = mod.grow_filler(model, state, filler, [1000.0, 2.5])
    assert calls["n"] == 1 + 10  # 1, 1, 2, 4, ..., 488: doubling to 1000
    assert all(torch.isfinite(g.memory).all() and torch.isfinite(g.norm).all() for g in grown)
    model.step = real_step
    with torch.no_grad():  # layer 0's z increment does not depend on the state: z grows exactly k-fold
        one = model.step(filler, state)[1][0].norm
    torch.testing.assert_close(grown[0].norm, one * torch.tensor([1000.0, 2.5]).view(2, 1, 1), rtol=1e-4, atol=1e-3)


def test_filler_block_continues_the_prompt_and_a_block_step_is_exact():
    """filler_block(seg, m) is seg followed by the filler the prompt itself would continue with; grow_filler with
    an m-segment block and k = m is exactly the block run once (the delta rule)."""
    mod = _library()
    from infini_export import InfiniConfig, InfiniTransformer
    from tasks import passkey as P
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny", update="delta")).eval()
    N = model.cfg.segment_len
    batch = P.make_batch(2, P.min_length() + 40 * N, 0.0, 3)  # needle at the start: filler after it
    s0 = batch.needle_end.max() // N + 1  # first pure-filler segment of both rows
    for b in range(2):
        seg = batch.ids[b, s0 * N:(s0 + 1) * N]
        np.testing.assert_array_equal(mod.filler_block(seg, 5), batch.ids[b, s0 * N:(s0 + 5) * N])
    not_filler = batch.ids[0, :N]  # the instruction
    np.testing.assert_array_equal(mod.filler_block(not_filler, 2), np.tile(not_filler, 2))
    blk = torch.from_numpy(batch.ids[:, s0 * N:(s0 + 3) * N])  # (2, 3N)
    state = model.init_state(2)
    with torch.no_grad():
        want = state
        for j in range(3):
            want = model.step(blk[:, j * N:(j + 1) * N], want)[1]
    got = mod.grow_filler(model, state, blk, [3.0, 3.0])
    for g, w in zip(got, want):
        torch.testing.assert_close(g.memory, w.memory, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.norm, w.norm, rtol=1e-5, atol=1e-6)


def test_weight_average_and_long_proxy_choose_what_ships(tmp_path):
    """--ema: model.safetensors holds the averaged weights, not the raw ones; --proxy-every: best/ holds the
    weights of the best proxy score, and that score is what the proxy gives when run again on them."""
    out = tmp_path / "ckpt"
    cmd = ["--quick", "--preset", "tiny", "--steps", "4", "--out", out, "--threads", "1", "--ema", "0.5",
           "--proxy-every", "1e-6"]
    proc = run_training(*cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weight average starts" in proc.stdout and "proxy at 512 tokens" in proc.stdout

    from infini_export import load_checkpoint
    ck = torch.load(out / "train_state.pt", map_location="cpu", weights_only=False)
    shipped = load_checkpoint(out).state_dict()
    averaged = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert int(ck["ema"]["n_averaged"]) == 4
    for name in ("blocks.0.attn.beta", "blocks.0.attn.wq.weight"):
        torch.testing.assert_close(shipped[name], averaged[name])
    assert not torch.allclose(shipped["blocks.0.attn.wq.weight"], ck["model"]["blocks.0.attn.wq.weight"])  # not the raw

    report = json.loads((out / "train_report.json").read_text())
    assert report["recipe"]["ema"] == 0.5 and len(report["proxy"]) >= 4
    best = report["best_proxy"]
    assert best["score"] == max(r["score"] for r in report["proxy"])
    mod = _library()
    again = mod.long_proxy(load_checkpoint(out / "best"), 512, 2, 31337, source=256, block=1)
    assert again["score"] == pytest.approx(best["score"], rel=1e-5)

    bad = run_training(*cmd[:-4], "--ema", "1.0")
    assert bad.returncode != 0 and "--ema must be a decay in [0, 1)" in bad.stderr


def test_long_proxy_is_the_extrapolation_checks_doubling_row(tmp_path):
    """The training-time proxy and scripts/extrapolation_check.py build the same doubling state from the same
    prompts, so they must score the same."""
    from infini_export import InfiniConfig, InfiniTransformer, save_checkpoint
    mod = _library()
    torch.manual_seed(0)
    model = InfiniTransformer(InfiniConfig.from_name("tiny")).eval()
    save_checkpoint(model, tmp_path)
    from training.proxy import extrapolation_check
    ref = extrapolation_check(model, 1024, 3, 256, 5, progress=False, block=3)["doubling"]
    got = mod.long_proxy(model, 1024, 3, 5, source=256, block=3)
    assert got["score"] == pytest.approx(ref["p_correct_min_token"], rel=1e-5)
    assert got["mean_p"] == pytest.approx(float(np.mean(ref["p_correct_per_token"])), rel=1e-5)
    assert got["exact_match"] == ref["exact_match"]
    with pytest.raises(ValueError, match="must hold the whole needle"):
        mod.long_proxy(model, 1024, 3, 5, source=16, block=3)


def test_init_weights_continues_a_run_from_other_weights(tmp_path):
    """--resume --init-weights X: the run goes on (step count, optimizer, schedule) from X's weights; without --resume
    a fresh run starts from them; a checkpoint of another config is refused by name."""
    from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint, save_checkpoint
    run = tmp_path / "run"
    base = ["--quick", "--preset", "tiny", "--out", run, "--threads", "1"]
    proc = run_training(*base, "--steps", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    torch.manual_seed(123)
    other = tmp_path / "other"
    save_checkpoint(InfiniTransformer(InfiniConfig.from_name("tiny")), other)
    # learning rates 0: one more step must leave exactly the other checkpoint's weights
    proc = run_training(*base, "--steps", "3", "--resume", "--init-weights", other, "--lr", "0", "--gate-lr", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "weights replaced by" in proc.stdout
    assert "--lr 0 replaces the run's 0.002" in proc.stdout  # a resumed run takes a learning rate given to it
    report = json.loads((run / "train_report.json").read_text())
    assert report["steps"] == 3
    want = load_checkpoint(other).state_dict()
    got = load_checkpoint(run).state_dict()
    ck = torch.load(run / "train_state.pt", map_location="cpu", weights_only=False)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
        torch.testing.assert_close(ck["model"][name], want[name], rtol=0, atol=0)

    small = tmp_path / "small"
    save_checkpoint(InfiniTransformer(InfiniConfig.from_name("small")), small)
    bad = run_training(*base, "--steps", "4", "--resume", "--init-weights", small)
    assert bad.returncode != 0 and "--init-weights" in bad.stderr and "another config" in bad.stderr
    # without --resume: a fresh run (new optimizer, step 0) from X's weights; learning rates 0 keep them exactly
    fresh = tmp_path / "fresh"
    cmd = ["--quick", "--preset", "tiny", "--out", fresh, "--threads", "1", "--steps", "2", "--init-weights", other,
           "--lr", "0", "--gate-lr", "0", "--answer-weights", "1,1,1,1,2,2"]
    proc = run_training(*cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fresh run from the weights of" in proc.stdout
    report = json.loads((fresh / "train_report.json").read_text())
    assert report["steps"] == 2 and report["init_weights"] == str(other)
    assert report["recipe"]["answer_weights"] == [1, 1, 1, 1, 2, 2]
    got = load_checkpoint(fresh).state_dict()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    bad = run_training(*cmd[:-1], "1,2")
    assert bad.returncode != 0 and "--answer-weights needs 6 weights" in bad.stderr
    bad = run_training(*base, "--steps", "4", "--init-weights", small)
    assert bad.returncode != 0 and "another config than --preset tiny" in bad.stderr


def test_weighted_answer_loss():
    mod = _library()
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0, 0.0, 0.0, 0.0, 0.0, 12.0]])
    assert float(mod.weighted_answer_loss(nll, [1] * 6)) == pytest.approx(float(nll.mean()))
    assert float(mod.weighted_answer_loss(nll, [3] * 6)) == pytest.approx(float(nll.mean()))  # scale-free
    # only the 5th digit counts: its mean NLL, (6 + 12) / 2
    assert float(mod.weighted_answer_loss(nll, [0, 0, 0, 0, 0, 1])) == pytest.approx(9.0)
    # twice the weight on the last two: (1 + 1 + 1 + 1 + 2 + 2) = 8 -> weights 0.75 x4, 1.5 x2
    want = float((nll * torch.tensor([0.75, 0.75, 0.75, 0.75, 1.5, 1.5])).mean())
    assert float(mod.weighted_answer_loss(nll, [1, 1, 1, 1, 2, 2])) == pytest.approx(want)


def test_every_setting_is_an_option_and_bad_settings_are_refused_by_name():
    import argparse
    from dataclasses import fields

    from training.config import TrainConfig, TrainingSetupError, add_arguments, from_arguments
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    assert from_arguments(ap.parse_args([])) == TrainConfig()
    assert all(f.metadata["help"] for f in fields(TrainConfig))
    tc = from_arguments(ap.parse_args(["--proxy-length", "64K", "--heldout-depths", "0,1", "--answer-weights",
                                       "1,1,1,1,2,2", "--lr", "1e-4", "--resume", "--update", "linear"]))
    assert (tc.proxy_length, tc.heldout_depths, tc.answer_weights) == (65536, [0.0, 1.0], [1, 1, 1, 1, 2, 2])
    assert tc.lr == 1e-4 and tc.gate_lr is None and tc.resume and tc.update == "linear"
    for argv, message in ((["--extrapolate-block", "0"], "--extrapolate-block must be >= 1"),
                          (["--extrapolate-block", "7"], "applies to --extrapolate-mode doubling only"),
                          (["--ema", "-0.1"], "--ema must be a decay in [0, 1)"),
                          (["--answer-weights", "0,0,0,0,0,0"], "--answer-weights needs 6 weights")):
        with pytest.raises(TrainingSetupError, match=re.escape(message)):
            from_arguments(ap.parse_args(argv))


def test_a_signal_stops_a_run_and_the_process_gets_its_handlers_back():
    import os
    import signal

    from training.report import stop_on_signals
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop["flag"]
        os.kill(os.getpid(), signal.SIGTERM)  # a training run finishes its step, saves, stops
        assert stop["flag"]
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is not None
