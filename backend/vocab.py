"""The project's vocabulary, declared once: per-head metrics, analyses and projection methods with their labels.

Pure (no NumPy, torch, Redis or Dash), so the engine, the figures and the pages all read the same names,
labels, help texts and thresholds. Adding a per-head metric: declare it in :data:`METRICS` (with the name of
its reference function in :mod:`backend.metrics`), compute it in the engine's reducer
(``backend.engine.metrics_reducer``) and bump :data:`ENGINE_VERSION` here. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_VERSION = "7"
"""Bumped whenever captured tensors or metrics change meaning: it is part of every run id."""

SINK_EPS = 0.3
"""Gu et al. (ICLR 2025): a head has a first-token sink when alpha(first) > SINK_EPS."""


@dataclass(frozen=True)
class Metric:
    """One per-head metric the run stores as ``metrics.{name}`` ``[L, H]`` (mean over prompts)."""

    name: str
    label: str
    unit: str
    help: str
    source: str
    reference: str
    """Name of the NumPy reference function in :mod:`backend.metrics` (one prompt's pattern -> ``[H]``)."""
    threshold: float | None = None
    """Value above which a head counts (cells outlined in the grid); None: no threshold."""
    grid: bool = True
    """Offered in the layer x head grids of the sinks and compare pages."""


METRICS: tuple[Metric, ...] = (
    Metric(
        "sink_first", "first-token mass alpha(first)", "alpha",
        "Mean attention the first token receives from the queries that see it, alpha(first) "
        "(Gu et al., ICLR 2025, 'When Attention Sink Emerges in Language Models'); a head has a "
        f"first-token sink when alpha > eps = {SINK_EPS}. StreamingLLM (Xiao et al., ICLR 2024) showed that "
        "causal LMs put much attention on the first tokens whatever they mean.",
        "Gu et al., ICLR 2025", "sink_first", threshold=SINK_EPS,
    ),
    Metric(
        "sink_special", "special-token mass", "alpha",
        "Mean of alpha(k) over the special tokens ([CLS], [SEP], BOS...); BERT heads put much "
        "attention on [CLS]/[SEP] (Clark et al., 2019, 'What Does BERT Look At?').",
        "Clark et al., 2019", "sink_special",
    ),
    Metric(
        "entropy", "attention entropy (nats)", "nats",
        "Mean over queries of the entropy of the attention row (natural log): 0 = one key, "
        "log(#keys) = uniform.",
        "REFERENCES.md section 5", "entropy",
    ),
    Metric(
        "distance", "mean attention distance (tokens)", "tokens",
        "Mean over queries of sum_j A[t, j] |t - j|: how far a head looks, in tokens.",
        "REFERENCES.md section 5", "distance",
    ),
    Metric(
        "previous_token", "previous-token score", "attention",
        "Mean over query positions t >= 1 of A[t, t-1]: how much each token attends to the one before it.",
        "TransformerLens head detector (previous-token pattern)", "previous_token", grid=False,
    ),
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
HEAD_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS)
"""The per-head metrics the sink reducer stores, in storage order."""
GRID_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.grid)


@dataclass(frozen=True)
class Analysis:
    """One analysis a run can include (``options["analyses"]``); the name is stored in run specs (run ids)."""

    name: str
    label: str


RAW_MAPS = "embedding_raw"
"""The analysis of the query-key maps without normalisation (``*_raw``), computed on request: it implies
"embedding" (:mod:`backend.engine.embedding_stage`)."""
ANALYSES: tuple[Analysis, ...] = (
    Analysis("attention", "Attention patterns (always)"),
    Analysis("metrics", "Sink & head metrics"),
    Analysis("embedding", "Joint query-key maps (AttentionViz)"),
    Analysis(RAW_MAPS, "Query-key maps without normalisation (also offered on the maps page)"),
    Analysis("importance", "Head importance"),
    Analysis("roles", "Head roles (head atlas)"),
    Analysis("streaming", "StreamingLLM experiment (causal LMs: first prompt, long text)"),
)
ANALYSIS_NAMES: tuple[str, ...] = tuple(a.name for a in ANALYSES)


@dataclass(frozen=True)
class ProjectionMethod:
    """A 2-D projection of the query-key maps (``options["embedding_methods"]``)."""

    name: str
    label: str


PROJECTION_METHODS: tuple[ProjectionMethod, ...] = (
    ProjectionMethod("umap", "UMAP"),
    ProjectionMethod("tsne", "t-SNE"),
    ProjectionMethod("pca", "PCA"),
)
METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in PROJECTION_METHODS)
METHOD_LABELS: dict[str, str] = {m.name: m.label for m in PROJECTION_METHODS}



@dataclass(frozen=True)
class Rule:
    """One way to compute a number whose definition has variants (docs/REFERENCES.md). The name is stored in
    run options or view URLs; the first rule of each family is the default and follows the paper's released
    code, the others are labelled variants."""

    name: str
    label: str
    source: str


SINK_RULES: tuple[Rule, ...] = (
    Rule("per_prompt", "per prompt, then averaged (released code)",
         "sail-sg/Attention-Sink, eval_sink_open_source.py (compute_attention_sink)"),
    Rule("prompt_mean", "threshold of the prompt-mean alpha (variant)", "Attention Atlas, engine versions <= 4"),
)
"""Sink rate over several prompts (view option ``eps``/``rule`` of the sinks page, ``sink_rule`` in the API)."""
DISCARD_RULES: tuple[Rule, ...] = (
    Rule("all_entries", "all entries, spare CLS->CLS (released code)", "jacobgil/vit-explain, vit_rollout.py"),
    Rule("spare_cls", "spare CLS row and column (variant)", "Attention Atlas, engine versions <= 4"),
)
"""Attention-rollout discard (view option ``discard_rule``)."""
IMPORTANCE_RULES: tuple[Rule, ...] = (
    Rule("per_token", "|.| per token (released code)",
         "pmichel31415's pytorch-pretrained-BERT (branch paul) classifier_eval.py; fairseq prune.py"),
    Rule("per_example", "|.| per example (paper eq. 2)", "Michel et al. 2019, eq. 2; Attention Atlas <= 4"),
)
"""Head importance (run option ``importance_rule``)."""
RETRIEVAL_TESTS: tuple[Rule, ...] = (
    Rule("text", "needle sentence, question, ROUGE-1 on stemmed words (released code)",
         "nightdessert/Retrieval_Head, retrieval_head_detection.py"),
    Rule("synthetic", "random-token copy test (variant)", "Attention Atlas, engine versions <= 4"),
)
"""Retrieval-head test (run option ``retrieval_test``)."""


def rule_names(rules: tuple[Rule, ...]) -> tuple[str, ...]:
    return tuple(r.name for r in rules)


INPUT_KINDS: tuple[str, ...] = ("text", "image")
"""What a model takes (``RunSpec.kind``); ``backend.engine.inputs.ADAPTERS`` has one adapter per kind."""
