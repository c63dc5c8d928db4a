"""The pruning-curve figure: perplexity on a log axis (it spans orders of magnitude), the random band kept > 0."""

from __future__ import annotations

import numpy as np

from backend import figures_importance as fi


def _curves() -> dict:
    fr = [0.0, 0.5, 1.0]
    return {"importance": {"fractions": fr, "perplexity": [10.0, 15.0, 6e4], "loss": [2.3, 2.7, 11.0]},
            "reverse": {"fractions": fr, "perplexity": [10.0, 3e4, 6e4], "loss": [2.3, 10.3, 11.0]},
            "random": {"fractions": fr, "perplexity": [10.0, 100.0, 6e4], "perplexity_std": [0.0, 300.0, 0.0],
                       "loss": [2.3, 4.6, 11.0], "loss_std": [0.0, 0.5, 0.0]}}


def test_perplexity_curves_use_a_log_axis_with_a_positive_band() -> None:
    fig = fi.pruning_curves(_curves(), "perplexity", baseline=10.0)
    assert fig.layout.yaxis.type == "log"
    band = next(t for t in fig.data if t.fill == "toself")
    assert min(band.y) > 0  # mean 100 - std 300 would vanish from a log axis
    lo, hi = (10 ** v for v in fig.layout.yaxis.range)  # the axis fits the curves
    assert lo <= 10.0 and 6e4 <= hi < 1e5
    loss = fi.pruning_curves(_curves(), "loss")
    assert loss.layout.yaxis.type != "log"
    assert min(next(t for t in loss.data if t.fill == "toself").y) < 4.6  # loss band unchanged: mean - std
