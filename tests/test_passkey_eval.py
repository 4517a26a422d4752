"""The streamed prompt (``PromptLayout.chunk``) and the materialised one are token-for-token the prompt the task's
format describes; the evaluation's length parsing and table."""
import numpy as np
import pytest

from tasks.passkey_eval import table
from runtime.measure import parse_length
from tasks import passkey as pk


def _reference_text(length: int, depth: float, key: str, instruction: bool = True) -> str:
    """The format as written in the task's docstring, with plain strings: whole filler sentences, the last one
    cut to fit (keeping its space), the needle after round(depth * n) of the n sentences."""
    budget = length - pk.min_length(instruction)
    units = []
    while sum(map(len, units)) < budget:
        unit = pk.FILLER[len(units) % len(pk.FILLER)] + " "
        room = budget - sum(map(len, units))
        units.append(unit if len(unit) <= room else unit[:room - 1] + " ")
    k = int(round(depth * len(units)))
    head = pk.INSTRUCTION + " " if instruction else ""
    return head + "".join(units[:k]) + pk.needle_text(key) + " " + "".join(units[k:]) + pk.QUESTION


@pytest.mark.parametrize("length", [pk.min_length(True), pk.min_length(True) + 1, 300, 1000, 4096, 8191, 33333])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.77, 1.0])
def test_streamed_prompt_equals_the_materialised_one(length, depth):
    batch = pk.make_batch(3, length, depth, 5)
    layout = pk.prompt_layout(length, depth)
    assert layout.needle_start == batch.needle_start[0] and layout.question_start == batch.question_start
    full = np.concatenate([layout.chunk(lo, min(length, lo + 97), batch.keys) for lo in range(0, length, 97)], axis=1)
    np.testing.assert_array_equal(full, batch.ids)
    for b, key in enumerate(batch.keys):
        assert pk.decode(batch.ids[b]) == _reference_text(length, depth, key)
        np.testing.assert_array_equal(pk.make_sample(length, depth, key=key).ids, batch.ids[b])


@pytest.mark.parametrize("length", [pk.min_length(False), pk.min_length(False) + 3, 500])
def test_prompts_without_instruction_follow_the_format(length):
    layout = pk.prompt_layout(length, 0.5, instruction=False)
    assert pk.decode(layout.ids(["31415"])[0]) == _reference_text(length, 0.5, "31415", instruction=False)
    assert sum(n for _, n in layout.parts) == length and layout.parts[0][0] != "instruction"


def test_a_long_prompt_is_streamed_in_pieces_that_join_up():
    """At 1M tokens, chunks at segment-unaligned offsets give the same tokens as one wider chunk around them."""
    layout = pk.prompt_layout(1 << 20, 0.85)
    keys = ["10000", "99999"]
    lo = layout.needle_start - 1000
    wide = layout.chunk(lo, lo + 3000, keys)
    pieces = np.concatenate([layout.chunk(a, a + 250, keys) for a in range(lo, lo + 3000, 250)], axis=1)
    np.testing.assert_array_equal(pieces, wide)
    needle = pk.decode(wide[1, 1000:1000 + pk.NEEDLE_LEN])
    assert needle == pk.needle_text("99999") + " "
    tail = layout.chunk(layout.length - 200, layout.length, keys)
    assert pk.decode(tail[0]).endswith(" " + pk.QUESTION) and pk.decode(tail[0]).count(pk.QUESTION) == 1


def test_parse_length_and_table():
    assert parse_length("4K") == 4096 and parse_length("1M") == 1 << 20 and parse_length("8000") == 8000
    result = {"depths": [0.0, 0.5, 1.0], "rows": [{"length": 4096, "tokens_per_second": 1.0, "peak_rss_mb": 2.0,
              "depths": {str(d): {"accuracy": 1.0, "control_accuracy": 0.0} for d in (0.0, 0.5, 1.0)}}]}
    text = table(result)
    assert "100 / 100 / 100" in text and "0 / 0 / 0" in text
