"""Lab requests (validation, digest, URL form) and the extreme-token tables (pure NumPy)."""

from __future__ import annotations

import numpy as np
import pytest

from backend import extremes
from backend.lab_spec import check_spec, from_query, lab_digest, to_query
from backend.spec import SpecError

TOKENS = [["a"] * 6, ["b"] * 9, ["c"] * 6]


def test_intervene_defaults_and_canonical_form() -> None:
    spec = check_spec({"kind": "intervene"}, 4, 4, TOKENS)
    assert spec == {"kind": "intervene", "prompt": 0, "op": "scale", "heads": "all", "keys": [0], "factor": 0.5}
    a = check_spec({"kind": "intervene", "heads": [[2, 1], [0, 3]], "keys": [3, 0, 3], "factor": 2}, 4, 4, TOKENS)
    b = check_spec({"kind": "intervene", "heads": [[0, 3], [2, 1]], "keys": [0, 3], "factor": 2.0}, 4, 4, TOKENS)
    assert a == b and a["heads"] == [[0, 3], [2, 1]] and a["keys"] == [0, 3]
    assert lab_digest("r" * 32, a) == lab_digest("r" * 32, b) != lab_digest("s" * 32, a)
    mean = check_spec({"kind": "intervene", "op": "mean", "heads": [[1, 1]]}, 4, 4, TOKENS)
    assert "keys" not in mean and "factor" not in mean
    assert "factor" not in check_spec({"kind": "intervene", "op": "mask"}, 4, 4, TOKENS)


@pytest.mark.parametrize("raw, message", [
    ({"kind": "intervene", "keys": [6]}, "outside the prompt"),
    ({"kind": "intervene", "prompt": 1, "keys": [8]}, None),  # prompt 1 has 9 tokens: fine
    ({"kind": "intervene", "factor": float("nan")}, "factor must be"),
    ({"kind": "intervene", "factor": True}, "factor must be"),
    ({"kind": "intervene", "heads": "some"}, "list of [layer, head] pairs"),
    ({"kind": "patch", "clean": 0, "corrupted": 0, "answers": ["x", "y"]}, "two different inputs"),
    ({"kind": "patch", "clean": 0, "corrupted": 1, "answers": ["x", "y"]}, "same number of tokens"),
    ({"kind": "patch", "clean": 0, "corrupted": 2, "answers": ["x", "x"]}, "must differ"),
    ({"kind": "patch", "clean": 0, "corrupted": 2, "answers": ["x", ""]}, "two non-empty strings"),
    ({"kind": "extremes", "prompt": 3}, "prompt must be the index"),
    ([1], "JSON object"),
])
def test_bad_requests(raw, message) -> None:
    if message is None:
        check_spec(raw, 4, 4, TOKENS)
        return
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_spec(raw, 4, 4, TOKENS)


@pytest.mark.parametrize("raw", [
    {"kind": "intervene", "op": "scale", "prompt": 1, "heads": [[0, 3], [2, 1]], "keys": [0, 4], "factor": 0.25},
    {"kind": "intervene", "op": "mask", "prompt": 2, "heads": "all", "keys": [1]},
    {"kind": "intervene", "op": "mean", "prompt": 0, "heads": [[3, 3]]},
    {"kind": "patch", "clean": 2, "corrupted": 0, "answers": [" Paris", " Rome"]},
])
def test_url_round_trip(raw) -> None:
    spec = check_spec(raw, 4, 4, TOKENS)
    assert check_spec(from_query(to_query(spec)), 4, 4, TOKENS) == spec


def test_domain_rates_threshold_each_input_then_average() -> None:
    # 3 inputs, 1 layer, 2 heads; head 0 sinks on inputs 0 and 2, head 1 on every input of domain "b"
    alpha = np.array([[[0.9, 0.1]], [[0.2, 0.5]], [[0.5, 0.6]]])
    domains, rates, counts = extremes.domain_rates(alpha, ["a", "b", "b"], eps=0.3)
    assert domains == ["a", "b"] and counts == [1, 2]
    # head 0 on "b": indicators 0 and 1 -> 0.5 (thresholding the mean alpha, 0.35, would give 1)
    np.testing.assert_array_equal(rates, [[[1.0, 0.0]], [[0.5, 1.0]]])
    np.testing.assert_array_equal(extremes.switch_score(rates), [[0.5, 1.0]])
    sw = extremes.switching_heads(rates, domains)
    assert [(s["head"], s["dormant_on"], s["active_on"]) for s in sw] == [(1, "b", "a"), (0, "a", "b")]


def test_sink_positions_beyond_the_first_token() -> None:
    received = np.zeros((2, 2, 8))
    received[0, 1, 0] = 0.8  # a first-token sink
    received[1, 0, 3] = 0.5  # a later sink, seen by 5 queries
    received[1, 1, 7] = 0.9  # the last key of a causal prompt: one query sees it
    hits = extremes.sink_positions(received, causal=True, eps=0.3)
    assert [(h["layer"], h["head"], h["position"], h["first"]) for h in hits] == [(0, 1, 0, True), (1, 0, 3, False)]
    # an encoder: every query sees every key
    assert len(extremes.sink_positions(received, causal=False, eps=0.3)) == 3


def test_token_table_and_labels() -> None:
    arrays = {"received": np.arange(2 * 2 * 3).reshape(2, 2, 3) / 10.0, "value_norm": np.ones((2, 2, 3)),
              "contribution": np.ones((2, 2, 3)), "resid_norm": np.array([[1.0, 2, 3], [4, 5, 6]])}
    rows = extremes.token_table(arrays, 1, ["x", "y", "z"])
    assert rows[2] == {"position": 2, "token": "z", "received": pytest.approx((0.8 + 1.1) / 2), "value_norm": 1.0,
                       "contribution": 1.0, "resid_norm": 6.0}
    assert extremes.parse_labels("prose, ,code", 4, "yours") == ["prose", "yours", "code", "yours"]
