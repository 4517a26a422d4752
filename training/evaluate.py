"""Greedy passkey evaluation of the eager model: the held-out check during training and ``--evaluate``."""
from __future__ import annotations

import time

from infini_export.checkpoint import load_checkpoint
from infini_export.eager import eager_session
from tasks import passkey as P
from .report import eval_table, log, write_json


def evaluate_heldout(model, sets, batch_size: int) -> dict:
    """Exact match over the held-out ``sets`` (``batches.heldout_sets``), in sub-batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    session = eager_session(model)
    cells, correct, total = {}, 0, 0
    for (length, depth), batch in sets:
        res = P.score_batch(session, batch, batch_size=batch_size)
        cells[f"{length}@{depth:g}"] = res.accuracy
        correct += sum(res.correct)
        total += len(res)
    model.train(was_training)
    return {"em": correct / max(1, total), "cells": cells, "n": total}


def evaluate_checkpoint(tc) -> dict:
    """``--evaluate``: greedy exact match of the checkpoint in ``tc.out`` at ``tc.eval_lengths`` x
    ``tc.eval_depths``, ``tc.eval_prompts`` prompts each (streamed, never materialised); prints a table and writes
    ``tc.eval_json`` when set. Returns ``{(length, depth): PasskeyScore}``."""
    model = load_checkpoint(tc.out).eval()
    session = eager_session(model)
    rows = {}
    t0 = time.time()
    for length in tc.eval_lengths:
        for depth in tc.eval_depths:
            keys = P.draw_keys([2 * 10 ** 6 + tc.seed, length, int(depth * 1000)], tc.eval_prompts)
            res = P.score(session, P.prompt_layout(length, depth).prompts(keys), keys)
            rows[(length, depth)] = res
            log(f"length {length} depth {depth:g}: EM {res.accuracy:.2f}  answers {res.answers} keys {res.keys}")
    print(f"\nExact match, {tc.eval_prompts} prompts per cell, greedy, eager torch ({time.time() - t0:.0f} s)\n")
    print(eval_table(rows, tc.eval_lengths, tc.eval_depths))
    if tc.eval_json:
        write_json(tc.eval_json, [{"length": k[0], "depth": k[1], "em": v.accuracy, "answers": v.answers,
                                   "keys": v.keys} for k, v in rows.items()])
    return rows
