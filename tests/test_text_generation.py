"""Text in, text out: ``generate_text`` against the eager model's greedy continuation decoded by the tokenizer,
streamed pieces that never end inside a character, end-of-text ids and stop strings, typed errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from runtime import InfiniSession
from runtime.errors import InputError, NoTokenizerError
from runtime.tokenizer import TextStream, Tokenizer
from tests.text_artifacts import copy_with, text_artifact

PROMPT = "Grüße aus"
NEW = 24


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return text_artifact(tmp_path_factory)


def eager_greedy(model, ids: list[int], n: int) -> list[int]:
    """The eager model's greedy continuation through its segment steps (complete segments kept as state, the
    partial segment re-run), independent of the runtime."""
    N = model.cfg.segment_len
    state, start, ids, out = model.init_state(1), 0, list(ids), []
    with torch.no_grad():
        for _ in range(n):
            while len(ids) - start > N:  # fold complete segments into the memory (the last one stays: 1..N)
                _, state = model.step(torch.tensor([ids[start:start + N]]), state)
                start += N
            logits, _ = model.step(torch.tensor([ids[start:]]), state)
            out.append(int(logits[0, -1].argmax()))
            ids.append(out[-1])
    return out


@pytest.fixture(scope="module")
def reference(art):
    """(prompt ids, greedy ids, their text up to the first end-of-text id) from the eager model and the tokenizers
    library."""
    model, _, trained = art
    hf = HFTokenizer.from_file(str(trained))
    prompt = [hf.token_to_id("<s>")] + hf.encode(PROMPT, add_special_tokens=False).ids
    ids = eager_greedy(model, prompt, NEW)
    eos = hf.token_to_id("</s>")
    cut = ids[:ids.index(eos)] if eos in ids else ids
    return prompt, ids, hf.decode(cut)


def _unchanged(s: InfiniSession, before: tuple) -> bool:
    state, consumed, pending = before
    return s.tokens_consumed == consumed and np.array_equal(s.pending_tokens, pending) and all(
        np.array_equal(v, state[k]) for k, v in s.state.items())


def _snap(s: InfiniSession) -> tuple:
    return s.state, s.tokens_consumed, s.pending_tokens


def test_generate_text_is_the_eager_greedy_continuation(art, reference):
    _, folder, _ = art
    prompt, ids, text = reference
    assert any(ord(c) > 0x7FF and c != "\ufffd" for c in text)  # characters of 3 and 4 bytes, split over tokens
    s = InfiniSession.open(folder)
    assert s.encode(PROMPT).tolist() == prompt
    assert s.generate_text(PROMPT, max_new_tokens=NEW) == text
    assert s.tokens_consumed == len(prompt) + NEW and s.decode(ids) == text
    s.reset()
    assert s.generate_text(PROMPT, max_new_tokens=NEW, temperature=0.0, top_k=0, top_p=1.0) == text


def test_pieces_join_to_the_text_and_never_end_inside_a_character(art, reference):
    _, folder, trained = art
    prompt, ids, text = reference
    s = InfiniSession.open(folder)
    gen = s.generate_text_iter(PROMPT, max_new_tokens=NEW)
    pieces = list(gen)
    assert "".join(pieces) == text and gen.ids == ids and gen.stopped == "length"
    assert gen.prompt_tokens == len(prompt) and gen.prefill_seconds > 0 and gen.decode_seconds > 0
    hf = HFTokenizer.from_file(str(trained))
    partial = [i for i in ids if hf.decode([i]).endswith("\ufffd")]
    assert partial and len(pieces) < len(ids)  # some tokens end inside a character: their text was held
    done = ""
    for piece in pieces[:-1]:
        done += piece
        assert piece and not piece.endswith("\ufffd") and text.startswith(done)


def test_a_text_stream_holds_a_character_until_its_last_token(art):
    _, _, trained = art
    tok = Tokenizer.from_file(trained)
    hf = HFTokenizer.from_file(str(trained))
    for text in ("Grüße aus Köln 世界你好 🙂🙃 ∑ ≤ ∞ naïve", "🚀✨世界 and \ufffd kept"):
        ids = hf.encode(text, add_special_tokens=False).ids
        stream, out, seen = TextStream(tok), [], []
        for i in ids:
            seen.append(i)
            out.append(stream.put(i))
            full = hf.decode(seen)
            emitted = "".join(out)
            assert full.startswith(emitted)
            if not full.endswith("\ufffd"):  # everything complete so far is out
                assert emitted == full
        assert "".join(out) + stream.flush() == text
        assert any(o == "" for o in out)  # a character over several tokens waited


def test_an_end_of_text_id_stops_generation(art, reference, tmp_path):
    _, folder, _ = art
    prompt, ids, text = reference
    j = next(j for j in range(3, len(ids)) if ids[j] not in ids[:j])  # the first time this id comes
    man = InfiniSession.open(folder).manifest.to_dict()
    stop_at = copy_with(folder, tmp_path / "eos", tokenizer={**man["tokenizer"], "eos": [ids[j]]})
    hf = InfiniSession.open(stop_at).tokenizer
    s = InfiniSession.open(stop_at)
    gen = s.generate_text_iter(PROMPT, max_new_tokens=NEW)
    assert "".join(gen) == hf.decode(ids[:j]) and gen.stopped == "eos" and gen.ids == ids[:j + 1]
    assert s.tokens_consumed == len(prompt) + j + 1


def test_a_stop_string_stops_generation_and_is_left_out(art, reference):
    _, folder, _ = art
    _, _, text = reference
    k = next(k for k in range(4, len(text)) if ord(text[k]) > 0x7FF and text[k] != "\ufffd")
    stop = text[k:k + 2]
    want = text[:text.find(stop)]
    s = InfiniSession.open(folder)
    gen = s.generate_text_iter(PROMPT, max_new_tokens=NEW, stop=[stop, "never seen"])
    pieces = list(gen)
    assert "".join(pieces) == want and gen.stopped == "stop" and all(stop not in p for p in pieces)
    assert len(gen.ids) < NEW
    s.reset()
    assert s.generate_text(PROMPT, max_new_tokens=NEW, stop=stop) == want
    # a stop string that only begins in the text: held back, then given out when it cannot match
    s.reset()
    near = text[-1] + "\x00"
    gen = s.generate_text_iter(PROMPT, max_new_tokens=NEW, stop=near)
    assert "".join(gen) == text and gen.stopped == "length"


def test_sampling_matches_the_ids_api_decoded(art):
    _, folder, _ = art
    s = InfiniSession.open(folder)
    text = s.generate_text(PROMPT, max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    s2 = InfiniSession.open(folder)
    ids = s2.generate(s2.encode(PROMPT), 16, temperature=1.0, top_k=50, top_p=0.9, seed=3)[0].tolist()
    eos = s2.tokenizer.eos
    cut = next((i for i, t in enumerate(ids) if t in eos), len(ids))
    assert text == s2.decode(ids[:cut])


def test_the_manifest_generation_defaults_apply(art, tmp_path):
    _, folder, _ = art
    short = copy_with(folder, tmp_path / "short", generation={"max_new_tokens": 5, "temperature": 0.0, "top_k": 0,
                                                               "top_p": 1.0})
    s = InfiniSession.open(short)
    gen = s.generate_text_iter(PROMPT)
    list(gen)
    assert len(gen.ids) == 5 or gen.stopped == "eos"


def test_bad_text_calls_are_refused_and_change_nothing(art, tmp_path):
    _, folder, _ = art
    s = InfiniSession.open(folder)
    s.feed(np.array([5, 6, 7]))
    before = _snap(s)
    bad = [dict(prompt=""),  # a session that is not fresh prepends no bos: no tokens
           dict(prompt="a", stop=""), dict(prompt="a", stop=["ok", ""]), dict(prompt="a", stop=[3]),
           dict(prompt=b"bytes"), dict(prompt="a", temperature=-1.0), dict(prompt="a", top_k=-1),
           dict(prompt="a", top_p=0.0), dict(prompt="a", max_new_tokens=-2), dict(prompt="a", max_new_tokens=True)]
    for kwargs in bad:
        for call in (s.generate_text, s.generate_text_iter):
            with pytest.raises(InputError):
                call(**kwargs)
            assert _unchanged(s, before), kwargs
    man = s.manifest.to_dict()
    nobos = copy_with(folder, tmp_path / "nobos", tokenizer={**man["tokenizer"], "add_bos": False})
    fresh = InfiniSession.open(nobos)
    with pytest.raises(InputError, match="encodes to no tokens"):
        fresh.generate_text("")
    assert fresh.tokens_consumed == 0
    plain = copy_with(folder, tmp_path / "plain", tokenizer=None)
    with pytest.raises(NoTokenizerError):
        InfiniSession.open(plain).generate_text_iter("a")
    two = InfiniSession.open(folder, batch_size=2)
    with pytest.raises(InputError, match="batch size 2"):
        two.generate_text("a")


def test_a_failure_while_generating_restores_the_session(art, monkeypatch):
    _, folder, _ = art
    s = InfiniSession.open(folder)
    s.feed(np.array([5, 6, 7]))
    before = _snap(s)
    calls = {"n": 0}
    real = s.backend.run_decode

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("device lost")
        return real(*args)
    monkeypatch.setattr(s.backend, "run_decode", failing)
    with pytest.raises(Exception, match="device lost"):
        s.generate_text(PROMPT, max_new_tokens=NEW)
    assert _unchanged(s, before)
