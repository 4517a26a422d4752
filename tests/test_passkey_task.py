"""The passkey task: prompt format, exact lengths, depth placement, determinism, scoring."""
import numpy as np
import pytest

from tasks import passkey as P


def test_format_instruction_needle_question():
    s = P.make_sample(600, 0.5, 123)
    text = s.text
    assert text.startswith(P.INSTRUCTION + " ")
    assert text.endswith("What is the pass key? The pass key is")
    assert len(s.key) == 5 and s.key.isdigit() and s.key[0] != "0"
    needle = f"The pass key is {s.key}. Remember it. {s.key} is the pass key."
    assert text.count(needle) == 1
    assert text.count(s.key) == 2  # the key is only in the needle, twice
    assert P.decode(s.ids[s.needle_start:s.needle_end]) == needle
    for pos in s.key_positions:
        assert P.decode(s.ids[pos:pos + 5]) == s.key
    assert P.decode(s.ids[s.question_start:]) == P.QUESTION
    assert "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again." in text
    # answer convention: a space then the five digits
    assert P.decode(s.answer_ids) == " " + s.key and s.answer_ids.dtype == np.int64
    assert len(s.answer_ids) == P.ANSWER_LEN == 6
    assert P.decode(s.full_ids) == text + " " + s.key


@pytest.mark.parametrize("length", [P.min_length(), P.min_length() + 1, 300, 301, 302, 1000, 1024, 4096, 9999])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_exact_lengths(length, depth):
    s = P.make_sample(length, depth, 7)
    assert s.ids.shape == (length,) and s.ids.dtype == np.int64
    assert s.ids.min() >= 0 and s.ids.max() < 256
    b = P.make_batch(3, length, depth, 7)
    assert b.ids.shape == (3, length) and b.ids.dtype == np.int64
    assert b.full_ids.shape == (3, length + P.ANSWER_LEN)


def test_no_filler_and_too_short():
    s = P.make_sample(P.min_length(instruction=False), 0.5, 1, instruction=False)
    assert s.text == f"The pass key is {s.key}. Remember it. {s.key} is the pass key. {P.QUESTION}"
    assert len(s.ids) < 128  # fits one segment of the small preset
    with pytest.raises(ValueError):
        P.make_sample(P.min_length() - 1, 0.5, 1)
    with pytest.raises(ValueError):
        P.make_sample(500, 1.5, 1)
    with pytest.raises(ValueError):
        P.make_sample(500, 0.5, 1, key="1234")
    with pytest.raises(ValueError, match="too short"):
        P.make_batch(2, P.min_length() - 1, 0.5, 1)
    with pytest.raises(ValueError, match="not inside a prompt"):
        P.prompt_layout(500, 0.5).chunk(400, 501, ["12345"])
    with pytest.raises(ValueError, match="5 digits"):
        P.prompt_layout(500, 0.5).prompts(["1234a"])


def test_depth_placement():
    length = 2000
    starts = [P.make_sample(length, d, 0).needle_start for d in np.linspace(0, 1, 11)]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    s0 = P.make_sample(length, 0.0, 0)
    assert s0.needle_start == len(P.INSTRUCTION) + 1  # right after the instruction
    s1 = P.make_sample(length, 1.0, 0)
    assert s1.needle_end + 1 == s1.question_start  # right before the question (one space between)
    mid = P.make_sample(length, 0.5, 0)
    assert abs(mid.needle_start - length / 2) < 100


def test_determinism_and_keys():
    a, b = P.make_sample(800, 0.4, 42), P.make_sample(800, 0.4, 42)
    assert a.key == b.key and np.array_equal(a.ids, b.ids)
    keys = {P.make_sample(800, 0.4, seed).key for seed in range(20)}
    assert len(keys) >= 18
    b1, b2 = P.make_batch(16, 700, 0.5, 5), P.make_batch(16, 700, 0.5, 5)
    assert np.array_equal(b1.ids, b2.ids) and b1.keys == b2.keys
    assert len(set(b1.keys)) >= 15
    assert P.make_batch(16, 700, 0.5, 6).keys != b1.keys
    rng = np.random.default_rng(0)
    assert P.make_sample(800, 0.4, rng).key != P.make_sample(800, 0.4, rng).key  # a Generator is consumed


def test_batch_rows_match_samples():
    depths = [0.0, 0.25, 0.25, 1.0]
    b = P.make_batch(4, 900, depths, 3)
    for i, d in enumerate(depths):
        s = P.make_sample(900, d, key=b.keys[i])
        assert np.array_equal(b.ids[i], s.ids)
        assert b.needle_start[i] == s.needle_start and b.needle_end[i] == s.needle_end
        assert tuple(b.key_positions[i]) == s.key_positions
        assert np.array_equal(b.answer_ids[i], s.answer_ids)


class SpellingSession:
    """Fake backend with the runtime's session protocol: whatever it is streamed, its last logits spell
    ``answers[row]`` one token at a time."""

    segment_len = 64

    def __init__(self, answers, vocab=256):
        self.answers = [a.encode() for a in answers]
        self.vocab = vocab
        self.reset(len(answers))

    def reset(self, batch_size=None):
        self.calls = 0
        self.tokens_consumed = 0
        self.batch_size = batch_size

    def stream(self, ids):
        assert ids.dtype == np.int64 and ids.shape[0] == self.batch_size
        B, T = ids.shape
        logits = np.random.default_rng(self.calls).normal(size=(B, self.vocab)).astype(np.float32)
        for row in range(B):
            logits[row, self.answers[row][self.calls]] = 100.0
        self.calls += 1
        self.tokens_consumed += T
        return logits


def test_scorer_exact_match():
    b = P.make_batch(3, 400, 0.5, 11)
    good = [" " + k for k in b.keys]
    sess = SpellingSession(good)
    assert P.greedy_answer(sess, b.ids) == good
    assert sess.tokens_consumed == 400 + P.ANSWER_LEN - 1  # prompt, then every generated token but the last
    assert sess.calls == P.ANSWER_LEN  # the prompt in one call (under 64 segments), then one call per token
    res = P.score(sess, b.ids, b.keys)
    assert res.accuracy == 1.0 and res.correct == [True] * 3
    wrong_digit = list(good)
    k = b.keys[1]
    wrong_digit[1] = " " + k[:4] + str((int(k[4]) + 1) % 10)
    res = P.score(SpellingSession(wrong_digit), b.ids, b.keys)
    assert res.correct == [True, False, True] and res.accuracy == pytest.approx(2 / 3)
    # sub-batches give the same
    res = P.score(SpellingSession(wrong_digit * 1), b.ids[:1], b.keys[:1], batch_size=1)
    assert res.correct == [True]


class RecordingSession:
    """The runtime's session protocol, recording what it is streamed and when it is reset; its logits favour
    token ``tokens_consumed % 256``."""

    segment_len = 16

    def reset(self, batch_size=None):
        self.log = getattr(self, "log", []) + [("reset", batch_size)]
        self.tokens_consumed = 0

    def stream(self, ids):
        self.log.append(("stream", ids.copy()))
        self.tokens_consumed += ids.shape[1]
        logits = np.zeros((ids.shape[0], 256), dtype=np.float32)
        logits[:, self.tokens_consumed % 256] = 1.0
        return logits


@pytest.mark.parametrize("length", [P.min_length() + 20, (P.min_length() // 16 + 3) * 16 + 14])  # 2nd: a boundary

def test_greedy_answer_streams_chunks_and_the_control_forgets_at_boundaries(length):
    layout = P.prompt_layout(length, 0.5)
    keys = ["12345", "67890"]
    whole = layout.ids(keys)
    sess = RecordingSession()
    P.greedy_answer(sess, layout.prompts(keys), chunk=48)
    streamed = [x for kind, x in sess.log if kind == "stream"]
    assert [x.shape[1] for x in streamed[:-5]] == [min(48, length - lo) for lo in range(0, length, 48)]
    np.testing.assert_array_equal(np.concatenate(streamed[:-5], axis=1), whole)  # the prompt, chunk by chunk
    assert [kind for kind, _ in sess.log].count("reset") == 1
    # memory off: only the last (partial) segment of the prompt, and a fresh state whenever a boundary is crossed
    sess = RecordingSession()
    answers = P.greedy_answer(sess, layout.prompts(keys), memory=False)
    first = (length - 1) // 16 * 16
    np.testing.assert_array_equal(sess.log[1][1], whole[:, first:])
    resets = [i for i, (kind, _) in enumerate(sess.log) if kind == "reset"]
    fed = length - first
    want = 1 + sum(1 for i in range(P.ANSWER_LEN - 1) if (fed + i) % 16 == 0)  # boundaries inside the answer
    assert len(resets) == want and all(b == 2 for kind, b in sess.log if kind == "reset")
    assert want == 2 or length % 16 != 14  # the second length crosses a boundary while answering
    assert all(len(a) == P.ANSWER_LEN for a in answers)


def test_is_correct_rules():
    assert P.is_correct(" 71432", "71432")
    assert P.is_correct("71432.", "71432")
    assert not P.is_correct(" 71439", "71432")
    assert not P.is_correct(" 7143.", "71432")
    assert not P.is_correct("714321", "71432")
    assert not P.is_correct(" abcde", "71432")


@pytest.mark.parametrize("answer, key", [
    ("", None),  # nothing generated
    ("      ", None),  # spaces only
    (" abcde", None),  # no digit at all
    (" \u0667\u0661\u0664\u0663\u0662", None),  # non-ASCII digits are not digits of a key
    (" 71 432", "71"),  # a split key: the first run only
    (" 7143.", "7143"),  # too short
    (" 714321", "714321"),  # too long
    ("x71432", "71432"),  # junk before the digits: the first run still counts
    (" \ufffd71432", "71432"),  # an invalid byte decoded as U+FFFD before the digits
])
def test_answer_parsing_failure_cases(answer, key):
    assert P.extract_key(answer) == key
    assert P.is_correct(answer, "71432") == (key == "71432")


def test_decode_never_raises_on_invalid_utf8():
    text = P.decode([0xFF, 0x37, 0xC3, 0x31, 0x34, 0x33, 0x32])  # invalid bytes around the digits
    assert "\ufffd" in text and P.extract_key(text) == "7"
    assert not P.is_correct(text, "71432")


def test_task_module_is_torch_free():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(P))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported


def test_task_module_imports_without_torch():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    code = ("import sys; from tasks import passkey as P; P.make_batch(2, 300, 0.5, 0); "
            "assert 'torch' not in sys.modules, 'importing the passkey task loaded torch'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
