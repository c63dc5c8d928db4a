"""The landing page's one-click examples: a causal LM on prose and on code, a ViT on sample images, an encoder.

Each example is an ordinary run request. Runs are content-addressed, so the first click submits the run and
every later click (by anyone) opens the same finished run from the cache. The analyses are chosen to finish in
well under a minute on two CPU cores; the heavier ones (maps, importance) are a click away on the run's views.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from backend import corpora, sample_images
from backend.cache import Cache
from backend.model_refs import DEFAULT_MODEL
from backend.settings import Settings

CODE = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def factorial(n):
    """Return n factorial."""
    result = 1
    for i in range(2, n + 1):
        result = result * i
    return result
'''


@dataclass(frozen=True)
class Example:
    """One example: what the button says, the run it submits and the view it opens."""

    key: str
    title: str
    blurb: str
    model: str
    inputs: Callable[[Cache], list[str]]
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "text"
    view: str = ""
    """URL segment after ``/runs/<id>`` (``""``: the run page)."""


def _prose(_cache: Cache) -> list[str]:
    return [" ".join(corpora.PROSE[:3]), *corpora.PROSE[3:6]]


def _code(_cache: Cache) -> list[str]:
    return [CODE]


def _digits(cache: Cache) -> list[str]:
    """The digit samples, stored as blobs like uploads; the run's inputs are their digests."""
    digests = []
    for key in sample_images.sample_keys():
        if key.startswith("digit-"):
            s = sample_images.get_sample(key)
            digest = hashlib.sha256(s.png).hexdigest()
            cache.put_blob(digest, s.png, name=f"{key}.png")
            digests.append(digest)
    return digests


def _sentences(_cache: Cache) -> list[str]:
    return ["The cat sat on the mat because it was tired.", "Paris is the capital of France.",
            "The keys to the cabinet are on the table.", "She gave him the book that he had asked for."]


LM = {"analyses": ["metrics"]}
"""SmolLM2 (30 layers x 9 heads) on two cores: ~20 s with metrics, ~2-3 min more with head roles (measured
2026-12-04 on the shared machine), so its examples offer roles on the atlas page instead."""
ENCODER = {"analyses": ["metrics", "roles"]}
"""MiniLM: ~1.5 s with metrics, ~5 s with head roles."""

EXAMPLES: tuple[Example, ...] = (
    Example("lm-prose", "Causal LM on prose", "SmolLM2-135M on four English passages: attention sinks, massive activations.",
            "smollm2-135m", _prose, LM),
    Example("lm-code", "Causal LM on code", "SmolLM2-135M on two Python functions: the token view and sinks over code.",
            "smollm2-135m", _code, LM),
    Example("vit-digits", "ViT on sample images", "digits-vit on five 8x8 digits: CLS attention over patches, rollout.",
            "digits-vit", _digits, {"analyses": ["metrics"]}, kind="image", view="vit"),
    Example("encoder", "Encoder (BERT-style)", "all-MiniLM-L6-v2 on four sentences: where each word attends, [CLS] sinks.",
            DEFAULT_MODEL, _sentences, ENCODER),
)
BY_KEY = {e.key: e for e in EXAMPLES}


def submit_example(cache: Cache, settings: Settings, key: str, client: str = "browser") -> tuple[str, str]:
    """Submit example ``key`` (a cache hit when it ran before); returns ``(run_id, url path to open)``."""
    from backend import jobs

    ex = BY_KEY[key]
    run_id, _ = jobs.submit(cache, settings, ex.model, ex.inputs(cache), dict(ex.options), kind=ex.kind,
                            client=client)
    return run_id, f"/runs/{run_id}" + (f"/{ex.view}" if ex.view else "")
