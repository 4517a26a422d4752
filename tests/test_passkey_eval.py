"""The lazy (constant-memory) prompt generator of the evaluation equals the task's generator."""
import numpy as np
import pytest

from infini_export.passkey_eval import LazyPrompt, parse_length, table
from infini_export.tasks import passkey as pk


@pytest.mark.parametrize("length", [pk.min_length(True), pk.min_length(True) + 1, 300, 1000, 4096, 8191, 33333])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.77, 1.0])
def test_lazy_prompt_equals_make_batch(length, depth):
    batch = pk.make_batch(3, length, depth, 5)
    lazy = LazyPrompt(length, depth)
    assert lazy.needle_start == batch.needle_start[0]
    assert lazy.question_start == batch.question_start
    full = np.concatenate([lazy.chunk(lo, min(length, lo + 97), batch.keys) for lo in range(0, length, 97)], axis=1)
    np.testing.assert_array_equal(full, batch.ids)


def test_parse_length_and_table():
    assert parse_length("4K") == 4096 and parse_length("1M") == 1 << 20 and parse_length("8000") == 8000
    result = {"depths": [0.0, 0.5, 1.0], "rows": [{"length": 4096, "tokens_per_second": 1.0, "peak_rss_mb": 2.0,
              "depths": {str(d): {"accuracy": 1.0, "control_accuracy": 0.0} for d in (0.0, 0.5, 1.0)}}]}
    text = table(result)
    assert "100 / 100 / 100" in text and "0 / 0 / 0" in text
