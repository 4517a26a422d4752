"""The training run: set-up (fresh, resumed or from other weights), the step loop, evaluations, saves."""
from __future__ import annotations

import dataclasses
import io
import random
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from runtime.atomic import atomic_write

from infini_export import InfiniConfig, InfiniTransformer, load_checkpoint, save_checkpoint
from tasks import passkey as P
from .batches import hard_rows, heldout_sets, make_train_batch, next_length
from .config import TrainConfig, TrainingSetupError
from .evaluate import evaluate_heldout
from .extrapolation import extrapolation_plan
from .losses import train_step_losses, weighted_answer_loss
from .optim import build_optimizer, lr_factor
from .proxy import long_proxy
from .report import log, progress_line, stop_on_signals, write_json, write_report

STATE_FILE = "train_state.pt"
_RECIPE = ("lr", "gate_lr", "weight_decay", "warmup", "tokens_per_step", "max_batch", "max_len", "no_filler_frac",
           "mix_frac", "boundary_frac", "needle_weight", "lm_weight", "promote_em", "promote_rows", "seed",
           "extrapolate_frac", "extrapolate_to", "extrapolate_before_needle", "extrapolate_mode", "extrapolate_block",
           "ema", "answer_weights")


def load_init_weights(model: InfiniTransformer, checkpoint: str | Path, against: str) -> None:
    """``--init-weights``: ``checkpoint``'s weights into ``model``; another config is refused, naming ``against``
    (what the model's config came from)."""
    init = load_checkpoint(checkpoint)
    if init.cfg.to_dict() != model.cfg.to_dict():
        raise TrainingSetupError(f"--init-weights: {checkpoint} has another config than {against}: "
                                 f"{init.cfg.to_dict()} vs {model.cfg.to_dict()}")
    model.load_state_dict(init.state_dict())


def _torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


class _Run:
    """One training run's objects: the model, optimizer, RNGs, weight average and the record ``tr``."""

    def __init__(self, tc: TrainConfig, argv: list[str]):
        self.tc = tc
        overrides = {"update": tc.update} if tc.update else {}
        self.cfg = cfg = InfiniConfig.from_name(tc.preset, **overrides)
        if tc.quick:
            tc.apply_quick(cfg.segment_len)
        self.proxy_source = min(4096, (tc.proxy_length // 2) // cfg.segment_len * cfg.segment_len)
        self.out = Path(tc.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / STATE_FILE
        torch.manual_seed(tc.seed)
        self.model = InfiniTransformer(cfg)
        given_lr = {"lr": tc.lr, "gate_lr": tc.gate_lr}
        tc.lr = 2e-3 if tc.lr is None else tc.lr
        tc.gate_lr = 2e-2 if tc.gate_lr is None else tc.gate_lr
        self.opt = build_optimizer(self.model, tc.lr, tc.gate_lr, tc.weight_decay)
        self.rng = np.random.default_rng(tc.seed)
        random.seed(tc.seed)
        self.start_len = tc.start_len or (P.min_length() + 40)
        self.tr = {"step": 0, "elapsed": 0.0, "tokens": 0, "cur_len": self.start_len, "history": [], "evals": [],
                   "promotions": [], "em_window": [], "runs": [], "proxy": [], "best_proxy": None}
        ck = self._resume(given_lr) if tc.resume else None
        if tc.init_weights:
            self._init_weights()
        self.model.train()
        # a saved average of the run's old weights would pull --init-weights' new ones back: not resumed then
        self.ema = self._weight_average(ck.get("ema") if ck is not None and not tc.init_weights else None)
        self.shipped = self.ema.module if self.ema is not None else self.model
        self.n_params = self.model.num_parameters()
        self.heldout = heldout_sets(tc, cfg.segment_len)
        self.em_window = deque(self.tr["em_window"], maxlen=10 ** 6)
        self.tr["runs"].append({"argv": list(argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "start_step": self.tr["step"]})
        log(f"{tc.preset}: {self.n_params:,} params, update={cfg.update}, segment_len={cfg.segment_len}, "
            f"threads={torch.get_num_threads()}, budget: {tc.minutes} min / {tc.steps or '-'} steps, out={self.out}")

    def _resume(self, given_lr: dict) -> dict:
        tc, path = self.tc, self.state_path
        if not path.is_file():
            raise TrainingSetupError(f"--resume: {path} does not exist")
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck["config"] != self.cfg.to_dict():
            raise TrainingSetupError(f"--resume: {path} was trained with another config: {ck['config']}")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])  # restores each group's base_lr: the run's own learning rates
        for g in self.opt.param_groups:
            key = "gate_lr" if g["name"] == "gates" else "lr"
            if given_lr[key] is not None and given_lr[key] != g["base_lr"]:
                log(f"--{key.replace('_', '-')} {given_lr[key]:g} replaces the run's {g['base_lr']:g} "
                    f"({g['name']} group)")
                g["base_lr"] = given_lr[key]
        tc.lr = next(g["base_lr"] for g in self.opt.param_groups if g["name"] == "decay")
        tc.gate_lr = next(g["base_lr"] for g in self.opt.param_groups if g["name"] == "gates")
        self.tr = ck["train"]
        self.rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        random.setstate(ck["python_rng"])
        log(f"resumed from {path}: step {self.tr['step']}, {self.tr['elapsed'] / 60:.1f} min, "
            f"length {self.tr['cur_len']}")
        self.tr.setdefault("proxy", [])
        self.tr.setdefault("best_proxy", None)
        return ck

    def _init_weights(self) -> None:
        """--init-weights: a resumed run goes on from these weights; a fresh one fine-tunes them."""
        tc = self.tc
        load_init_weights(self.model, tc.init_weights, self.state_path if tc.resume else f"--preset {tc.preset}")
        self.tr["init_weights"] = str(tc.init_weights)
        log(f"weights replaced by {tc.init_weights} (optimizer state, step and schedule kept)" if tc.resume else
            f"fresh run from the weights of {tc.init_weights} (new optimizer and schedule; curriculum at "
            f"{self.start_len})")

    def _weight_average(self, saved_ema: dict | None):
        """--ema: the averaged copy (``torch.optim.swa_utils``), resumed when the run saved one; what ships."""
        if not self.tc.ema:
            if saved_ema is not None:
                log(f"warning: {self.state_path} holds a weight average ({int(saved_ema['n_averaged'])} steps) but "
                    "--ema is off: it is dropped and the raw weights ship; pass --ema to keep it")
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.tc.ema))
        if saved_ema is not None:
            ema.load_state_dict(saved_ema)
            log(f"resumed the weight average ({int(ema.n_averaged)} steps averaged)")
        else:
            log(f"weight average starts from the current weights, decay {self.tc.ema}")
        return ema

    # ---- saving and reporting -------------------------------------------------------------------------
    def save_state(self) -> None:
        self.tr["em_window"] = list(self.em_window)
        _torch_save({"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                     "optimizer": self.opt.state_dict(), "train": self.tr, "numpy_rng": self.rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                     "args": dataclasses.asdict(self.tc),
                     "ema": self.ema.state_dict() if self.ema is not None else None}, self.state_path)

    def report(self, final: bool) -> dict:
        tc, tr = self.tc, self.tr
        last_eval = tr["evals"][-1] if tr["evals"] else None
        rep = {"preset": tc.preset, "config": self.cfg.to_dict(), "parameters": self.n_params,
               "steps": tr["step"], "tokens": tr["tokens"], "train_minutes": round(tr["elapsed"] / 60, 2),
               "final": final, "curriculum_length": tr["cur_len"], "max_len": tc.max_len,
               "heldout_em": last_eval["em"] if last_eval else None,
               "heldout": {"lengths": tc.heldout_lengths, "depths": tc.heldout_depths,
                           "prompts_per_cell": tc.heldout_prompts,
                           "note": "needle in an earlier segment than the prompt's last token; greedy, exact match"},
               "recipe": {k: getattr(tc, k) for k in _RECIPE},
               "init_weights": tr.get("init_weights"),
               "proxy": tr["proxy"], "best_proxy": tr["best_proxy"],
               "runs": tr["runs"], "promotions": tr["promotions"], "evals": tr["evals"], "history": tr["history"]}
        write_report(self.out, rep)
        return rep

    def do_eval(self) -> dict:
        t = time.time()
        res = evaluate_heldout(self.shipped, self.heldout, batch_size=16)
        res.update(step=self.tr["step"], minutes=round(self.tr["elapsed"] / 60, 2), length=self.tr["cur_len"])
        self.tr["evals"].append(res)
        log(f"held-out EM {res['em']:.3f} over {res['n']} prompts at step {self.tr['step']} "
            f"({time.time() - t:.1f} s): {res['cells']}")
        return res

    def do_proxy(self) -> dict:
        """Score the shipped weights (and the raw ones, under --ema) on the long-input proxy; keep the best."""
        tc, tr = self.tc, self.tr
        t = time.time()
        kw = dict(length=tc.proxy_length, prompts=tc.proxy_prompts, seed=tc.proxy_seed, source=self.proxy_source,
                  block=max(1, tc.extrapolate_block))
        rec = {"step": tr["step"], "minutes": round(tr["elapsed"] / 60, 2), **long_proxy(self.shipped, **kw)}
        if self.ema is not None:
            raw = long_proxy(self.model, **kw)
            rec["raw"] = {k: raw[k] for k in ("score", "mean_p", "exact_match")}
        tr["proxy"].append(rec)
        best = tr["best_proxy"]
        if best is None or rec["score"] > best["score"]:
            save_checkpoint(self.shipped, self.out / "best")
            tr["best_proxy"] = {k: rec[k] for k in ("step", "minutes", "score", "mean_p", "exact_match")}
            write_json(self.out / "best" / "proxy.json", rec)
        raw_s = f" (raw weights {rec['raw']['score']:.3f})" if self.ema is not None else ""
        log(f"proxy at {tc.proxy_length:,} tokens: lowest-p {rec['score']:.3f}{raw_s}, mean p {rec['mean_p']:.3f}, "
            f"EM {rec['exact_match']:.2f} over {tc.proxy_prompts} prompts at step {tr['step']} "
            f"({time.time() - t:.1f} s); best {tr['best_proxy']['score']:.3f} at step {tr['best_proxy']['step']}")
        return rec

    # ---- one step -----------------------------------------------------------------------------------------
    def step(self, acc: dict) -> float:
        """One optimizer step on a fresh batch; its numbers go into ``acc``; promotes the curriculum. Adds the time
        since ``self.t_last`` to the run's elapsed time and returns the time it did so."""
        tc, tr, N = self.tc, self.tr, self.cfg.segment_len
        budget_s = tc.minutes * 60.0 if tc.minutes > 0 else float("inf")
        progress = max(tr["step"] / tc.steps if tc.steps else 0.0, tr["elapsed"] / budget_s)
        f = lr_factor(tr["step"], progress, tc.warmup)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        batch, kind = make_train_batch(self.rng, tr["cur_len"], tc, N)
        extra = (extrapolation_plan(self.rng, batch, N, tc.extrapolate_frac, tc.extrapolate_to,
                                    tc.extrapolate_before_needle) if kind != "nofill" else None)
        ans_nll, needle_nll, lm, em = train_step_losses(self.model, batch, extra, tc.extrapolate_mode,
                                                        tc.extrapolate_block)
        loss = (weighted_answer_loss(ans_nll, tc.answer_weights) + tc.needle_weight * needle_nll.mean()
                + tc.lm_weight * lm)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        now = time.time()
        tr["elapsed"] += now - self.t_last
        self.t_last = now
        tr["step"] += 1
        ntok = int(batch.ids.shape[0] * (batch.ids.shape[1] + P.ANSWER_LEN - 1))
        tr["tokens"] += ntok
        acc["loss"] += float(loss.detach())
        acc["ans"] += float(ans_nll[:, 1:].detach().mean())
        acc["needle"] += float(needle_nll.detach().mean())
        acc["lm"] += float(lm.detach())
        acc["n"] += 1
        acc["tok"] += ntok
        hard = hard_rows(batch, N)
        em_rows = em.numpy().astype(bool)
        xr = extra.k > 0 if extra is not None else np.zeros_like(hard)  # (B,) extrapolated rows
        acc["em_x"].extend(em_rows[xr].tolist())  # their own EM, kept out of the curriculum's and "local"
        hard = hard & ~xr
        if kind in ("filler", "mixed"):
            acc["em_f"].extend(em_rows[hard].tolist())
            acc["em_e"].extend(em_rows[~hard & ~xr].tolist())
        else:
            acc["em_n"].extend(em_rows.tolist())
        if kind == "filler" and hard.any():  # the curriculum promotes on the training EM of the hard rows only
            self.em_window.extend(em_rows[hard].astype(float).tolist())
            self._maybe_promote()
        return now

    def _maybe_promote(self) -> None:
        tc, tr = self.tc, self.tr
        if len(self.em_window) >= tc.promote_rows and tr["cur_len"] < tc.max_len:
            recent = list(self.em_window)[-tc.promote_rows:]
            if float(np.mean(recent)) > tc.promote_em:
                new_len = next_length(tr["cur_len"], tc.max_len)
                tr["promotions"].append({"step": tr["step"], "minutes": round(tr["elapsed"] / 60, 2),
                                         "from": tr["cur_len"], "to": new_len})
                log(f"step {tr['step']}: train EM {np.mean(recent):.2f} > {tc.promote_em}: length "
                    f"{tr['cur_len']} -> {new_len}")
                tr["cur_len"] = new_len
                self.em_window.clear()

    def history_record(self, acc: dict, seconds: float) -> dict:
        n = max(1, acc["n"])

        def mean(key):
            return float(np.mean(acc[key])) if acc[key] else None
        return {"step": self.tr["step"], "minutes": round(self.tr["elapsed"] / 60, 2), "loss": acc["loss"] / n,
                "answer_loss": acc["ans"] / n, "needle_loss": acc["needle"] / n, "lm_loss": acc["lm"] / n,
                "train_em": mean("em_f"), "train_em_local": mean("em_e"), "train_em_nofill": mean("em_n"),
                "train_em_extrapolated": mean("em_x"), "length": self.tr["cur_len"],
                "lr": self.opt.param_groups[0]["lr"], "tokens": self.tr["tokens"],
                "tokens_per_s": acc["tok"] / max(1e-6, seconds),
                "gates": [round(float(torch.sigmoid(b.attn.beta.detach()).mean()), 3) for b in self.model.blocks]}


def _fresh_acc() -> dict:
    return {"loss": 0.0, "ans": 0.0, "needle": 0.0, "lm": 0.0, "em_f": [], "em_e": [], "em_n": [], "em_x": [],
            "n": 0, "tok": 0}


def train(tc: TrainConfig, argv: list[str] | None = None) -> dict:
    """Train (or go on training) the passkey model of ``tc`` until its step or wall-time budget, SIGTERM or SIGINT
    (then the step finishes and everything is saved). Writes OUT/config.json + model.safetensors (the averaged
    weights under --ema), train_report.json / .png, train_state.pt (for --resume) and, with --proxy-every, best/.
    ``argv`` is recorded in the report (default ``sys.argv``). Returns the final report."""
    run = _Run(tc, sys.argv if argv is None else argv)
    tr = run.tr
    with stop_on_signals() as stop:
        budget_s = tc.minutes * 60.0 if tc.minutes > 0 else float("inf")
        run.t_last = time.time()
        t_eval = t_save = t_log = t_proxy = run.t_last
        acc = _fresh_acc()
        while not stop["flag"] and not (tc.steps and tr["step"] >= tc.steps) and tr["elapsed"] < budget_s:
            now = run.step(acc)
            if now - t_log >= tc.log_every or tc.quick:
                rec = run.history_record(acc, now - t_log)
                tr["history"].append(rec)
                log(progress_line(rec, tr["cur_len"]))
                acc, t_log = _fresh_acc(), now
            if now - t_eval >= tc.eval_every * 60:
                run.do_eval()
                t_eval = run.t_last = time.time()  # the wall-time budget includes evaluations
                tr["elapsed"] += t_eval - now
            if tc.proxy_every and time.time() - t_proxy >= tc.proxy_every * 60:
                t0 = time.time()
                run.do_proxy()
                t_proxy = run.t_last = time.time()  # counted in the budget too
                tr["elapsed"] += t_proxy - t0
            if now - t_save >= tc.save_every * 60:
                run.save_state()
                save_checkpoint(run.shipped, run.out)
                run.report(final=False)
                t_save = time.time()

        run.model.eval()
        if not stop["flag"] and (not tr["evals"] or tr["evals"][-1]["step"] != tr["step"]):
            run.do_eval()  # (skipped when interrupted: save quickly)
            if tc.proxy_every and (not tr["proxy"] or tr["proxy"][-1]["step"] != tr["step"]):
                run.do_proxy()
        save_checkpoint(run.shipped, run.out)
        run.save_state()
        rep = run.report(final=not stop["flag"])
        log(f"done: {tr['step']} steps, {tr['tokens']:,} tokens, {tr['elapsed'] / 60:.1f} min, length {tr['cur_len']}, "
            f"held-out EM {rep['heldout_em']}; wrote {run.out}")
        return rep
