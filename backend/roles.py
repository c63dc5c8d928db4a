"""Head roles for the head atlas: the role code table, thresholds, definitions with sources, the dominant
role of each head, the retrieval-score counting rule, and the comparison of two runs. Pure NumPy (the app
imports it without torch; the worker stage :mod:`backend.engine.roles_stage` computes the scores).

Scores per head (each ``[layer, head]``; definitions in ``docs/REFERENCES.md`` section 5 and :data:`SCORES`):

    previous_token   run's prompts          mean over t >= 1 of A[t, t-1]               (backend.metrics)
    induction        repeated random tokens mean over the 2nd copy of A[t, t-L+1]       (Olsson et al. 2022)
    duplicate_token  repeated random tokens attention to earlier copies of the token    (Wang et al. 2022)
    positional_peak  repeated random tokens offset d = t - j (|d| <= 8) with the most mean attention
    positional_mass  repeated random tokens mean attention at that offset
    retrieval        needle in a haystack   Wu et al. 2024 (causal LMs only)
    sink_first       run's prompts          Gu et al. alpha of the first token           (backend.metrics)
    entropy          run's prompts          mean over queries of -sum_j A log A (nats)    (backend.metrics)

Dominant role (``roles.dominant``, int32 ``[layer, head]``): the first role of :data:`PRIORITY` whose
score reaches its threshold (:data:`THRESHOLDS`), else ``none``. Specific mechanisms measured on inputs
built to reveal them come first; the first-token sink, which many heads of causal LMs show besides their
other work, comes last. The positional role counts only when the peak offset is not +1 (offset +1 *is*
the previous-token score, which has its own role). Every role a head passes is listed in the table.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from backend import vocab
from backend.vocab import SINK_EPS

ROLES: tuple[str, ...] = (
    "none", "previous_token", "induction", "duplicate_token", "retrieval", "positional", "sink",
)
"""Role code table: ``roles.dominant == i`` means ``ROLES[i]`` (stable: codes are stored in runs)."""
ROLE_CODE = {name: i for i, name in enumerate(ROLES)}
ROLE_LABELS = {
    "none": "no clear role", "previous_token": "previous token", "induction": "induction",
    "duplicate_token": "duplicate token", "retrieval": "retrieval", "positional": "positional",
    "sink": "first-token sink",
}
ROLE_GLYPHS = {
    "none": "·", "previous_token": "←", "induction": "↻", "duplicate_token": "=", "retrieval": "R",
    "positional": "↔", "sink": "⚓",
}
ROLE_COLOURS = {
    "none": "#e5e7eb", "previous_token": "#1f77b4", "induction": "#d62728", "duplicate_token": "#9467bd",
    "retrieval": "#ff7f0e", "positional": "#2ca02c", "sink": "#8c8c8c",
}
PRIORITY: tuple[str, ...] = ("retrieval", "induction", "duplicate_token", "previous_token", "positional", "sink")
THRESHOLDS: dict[str, float] = {
    "retrieval": 0.1,  # Wu et al. (2024): heads above 0.1 are retrieval heads
    "induction": 0.3,
    "duplicate_token": 0.3,
    "previous_token": 0.4,
    "positional": 0.4,  # on positional_mass, peak offset != +1
    "sink": SINK_EPS,  # Gu et al. (ICLR 2025): alpha(first token) > SINK_EPS
}
ROLE_SCORE = {
    "retrieval": "retrieval", "induction": "induction", "duplicate_token": "duplicate_token",
    "previous_token": "previous_token", "positional": "positional_mass", "sink": "sink_first",
}
"""Role -> the score its threshold applies to."""
RETRIEVAL_MIN_RECALL = 0.5
"""Wu et al. credit a trial's heads only when the answer's ROUGE-1 recall of the needle exceeds 50 %."""
RETRIEVAL_MAX_NEW_TOKENS = 50
"""The released detector decodes at most 50 tokens and stops after a newline."""
RETRIEVAL_TESTS: dict[str, str] = {r.name: f"{r.label}: {r.source}" for r in vocab.RETRIEVAL_TESTS}
DEFAULT_RETRIEVAL_TEST = vocab.RETRIEVAL_TESTS[0].name
RETRIEVAL_TEMPLATE = "Based on the content of the book, Question: {question}\nAnswer:"
"""The released detector's question format (appended right after the haystack with the needle)."""
RETRIEVAL_NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
RETRIEVAL_QUESTION = "What is the best thing to do in San Francisco?"
RETRIEVAL_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"
"""Default needle, question and answer: the released detector's defaults (the answer, ``real_needle`` there,
is what generation must recall and whose tokens the heads must attend to)."""
RETRIEVAL_HAYSTACK = (
    "The ferry left the harbour a little after seven, as it did every morning. The river was wide and slow "
    "there, and the water carried a faint smell of timber from the mills upstream. Most passengers were "
    "workers going to the shipyard on the far bank; a few carried baskets of vegetables for the market. "
    "The captain had made the crossing for twenty years and knew every sandbank by the colour of the water "
    "above it. In winter the fog could hide the far bank entirely, and then he steered by the bells of the "
    "church and the horn of the yard. The town itself had grown around the crossing. There was a square with "
    "a fountain, a library that opened three afternoons a week, and a bakery whose bread was sold out by "
    "nine. Children walked to school along the embankment, counting the barges that passed. Nobody remembered "
    "exactly when the bridge had first been proposed, but every few years a new plan appeared in the paper, "
    "was discussed at length in the square, and was quietly forgotten. The ferry went on crossing. "
)
"""Default haystack (written for Attention Atlas), repeated until the context is full."""


def rouge1_recall(target: str, prediction: str) -> float:
    """ROUGE-1 recall of ``target`` words found in ``prediction`` (Porter stemming, lower case, alphanumeric
    words), exactly ``rouge_score.rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)`` as the released
    detector calls it (``scorer.score(real_needle, response)["rouge1"].recall``). In [0, 1]."""
    return float(_rouge_scorer().score(target, prediction)["rouge1"].recall)


_SCORER: list = []


def _rouge_scorer():
    if not _SCORER:
        from rouge_score import rouge_scorer  # noqa: PLC0415  (worker-side only)

        _SCORER.append(rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True))
    return _SCORER[0]


def find_needle_span(prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> tuple[int, int]:
    """Where the answer sits in the prompt, as the released ``find_needle_idx``: the first ``i`` whose window
    ``prompt_ids[i : i + len(answer_ids)]`` holds more than 90 % of the answer's distinct ids; ``(-1, -1)``
    when there is none."""
    want = set(int(x) for x in answer_ids)
    n = len(answer_ids)
    if not want:
        return -1, -1
    ids = [int(x) for x in prompt_ids]
    for i in range(len(ids)):
        if len(set(ids[i : i + n]) & want) / len(want) > 0.9:
            return i, i + n
    return -1, -1
POSITIONAL_MAX_OFFSET = 8


@dataclass(frozen=True)
class Score:
    key: str
    label: str
    definition: str
    inputs: str
    source: str
    url: str


SCORES: tuple[Score, ...] = (
    Score("previous_token", "previous token",
          "Mean over query positions t ≥ 1 of A[t, t−1]: how much each token attends to the one before it.",
          "the run's prompts", "docs/REFERENCES.md §5; TransformerLens head detector (previous-token pattern)",
          "https://transformerlensorg.github.io/TransformerLens/generated/code/transformer_lens.head_detector.html"),
    Score("induction", "induction",
          "Random tokens repeated twice (length L each): mean attention from each position t of the second copy "
          "to t − L + 1, the token after the earlier occurrence of the current token.",
          "4 seeded sequences of random tokens (special tokens excluded), each repeated twice",
          "Olsson et al. 2022, In-context Learning and Induction Heads",
          "https://transformer-circuits.pub/2022/in-context-learning-and-induction-heads/index.html"),
    Score("duplicate_token", "duplicate token",
          "For each query whose token occurred earlier, the attention summed over those earlier occurrences; "
          "mean over such queries.",
          "the same repeated random sequences",
          "Wang et al. 2022, Interpretability in the Wild (duplicate token heads)", "https://arxiv.org/abs/2211.00593"),
    Score("positional_peak", "positional peak offset",
          "Mean attention by relative offset d = t − j (|d| ≤ 8; +1 = previous token, 0 = itself, −1 = next); "
          "the offset with the most attention.",
          "the same repeated random sequences",
          "Attention Atlas (backend.metrics.positional_profile); cf. Clark et al. 2019, What Does BERT Look At?",
          "https://arxiv.org/abs/1906.04341"),
    Score("positional_mass", "positional peak mass",
          "The mean attention at the peak offset (1 = every query attends only to that offset).",
          "the same repeated random sequences", "Attention Atlas (backend.metrics.positional_profile)",
          "https://arxiv.org/abs/1906.04341"),
    Score("retrieval", "retrieval",
          "Needle in a haystack, greedy generation: a step counts for a head when the generated token equals a "
          "token of the answer span and the head's top-attended position is that token there; score = counted "
          "steps / answer length, averaged over the trials where the model reproduced the answer (ROUGE-1 recall "
          "> 0.5). Heads above 0.1 are retrieval heads. Causal LMs only. Default protocol as the released "
          "detector (a needle sentence in a text, a question, up to 50 tokens stopping at a newline, ROUGE-1 on "
          "stemmed words); variant 'synthetic' (random-token needle and haystack with a copy cue, 8 tokens, "
          "ROUGE-1 on token ids).",
          "3 prompts, the needle at depth 20/50/80 % (run options retrieval_test, retrieval_needle, "
          "retrieval_question, retrieval_answer, retrieval_haystack)",
          "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality; released code "
          "nightdessert/Retrieval_Head retrieval_head_detection.py",
          "https://arxiv.org/abs/2404.15574"),
    Score("sink_first", "first-token sink",
          "Mean attention the first token receives from the queries that see it (alpha), averaged over the run's "
          f"prompts; the role 'sink' when that mean is > {SINK_EPS} (the sinks page gives the sink rate per prompt, "
          "as the released evaluation).",
          "the run's prompts", "Gu et al. ICLR 2025, When Attention Sink Emerges in Language Models",
          "https://arxiv.org/abs/2410.10781"),
    Score("entropy", "entropy",
          "Mean over queries of −Σ_j A[t, j] log A[t, j] (nats): 0 = one key, high = spread out.",
          "the run's prompts", "docs/REFERENCES.md §5", "https://arxiv.org/abs/1906.04341"),
)
SCORE_KEYS: tuple[str, ...] = tuple(s.key for s in SCORES)
SCORE_BY_KEY = {s.key: s for s in SCORES}


# --- roles ------------------------------------------------------------------------------------------


def role_flags(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{role: [L, H] bool}``: the head reaches the role's threshold. A missing score (e.g. retrieval of an
    encoder) gives no head that role; NaN never passes."""
    shape = _shape(scores)
    out: dict[str, np.ndarray] = {}
    for role in PRIORITY:
        key = ROLE_SCORE[role]
        if key not in scores:
            out[role] = np.zeros(shape, dtype=bool)
            continue
        v = np.asarray(scores[key], dtype=np.float64)
        flag = v > THRESHOLDS[role] if role == "sink" else v >= THRESHOLDS[role]
        if role == "positional":
            peak = np.asarray(scores.get("positional_peak", np.zeros(shape)), dtype=np.float64)
            flag &= peak != 1
        out[role] = np.nan_to_num(flag, nan=False).astype(bool)
    return out


def dominant_roles(scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[L, H]`` int32 role codes (:data:`ROLES`): the first role of :data:`PRIORITY` the head passes."""
    flags = role_flags(scores)
    out = np.zeros(_shape(scores), dtype=np.int32)
    for role in reversed(PRIORITY):  # later assignments (higher priority) overwrite earlier ones
        out[flags[role]] = ROLE_CODE[role]
    return out


def _shape(scores: Mapping[str, Any]) -> tuple[int, ...]:
    for v in scores.values():
        a = np.asarray(v)
        if a.ndim == 2:
            return a.shape
    raise ValueError("no [layer, head] score given")


# --- retrieval (Wu et al. 2024) ---------------------------------------------------------------------


def retrieval_hits(top: np.ndarray, generated: Sequence[int], context: Sequence[int],
                   needle_start: int, needle_end: int) -> np.ndarray:
    """One trial's retrieval score per head -> ``[L, H]``.

    ``top [steps, L, H]``: each head's top-attended key position (argmax over the keys of the query that
    produces the step's token); ``generated [steps]``: the greedy tokens; ``context``: the token ids by
    position (prompt then generated); the needle occupies ``needle_start .. needle_end - 1``. A step counts
    for a head when its top position lies in the needle and the token there equals the generated token;
    score = counted steps / needle length.
    """
    top = np.asarray(top, dtype=np.int64)
    context = np.asarray(context, dtype=np.int64)
    n = needle_end - needle_start
    if n <= 0:
        raise ValueError("empty needle")
    counted = np.zeros(top.shape[1:], dtype=np.float64)
    for s, tok in enumerate(generated):
        pos = top[s]
        inside = (pos >= needle_start) & (pos < needle_end)
        same = context[np.clip(pos, 0, len(context) - 1)] == int(tok)
        counted += inside & same
    return counted / n


def copy_recall(generated: Sequence[int], needle: Sequence[int]) -> float:
    """ROUGE-1 recall on token ids: the share of the needle's tokens (with multiplicity) found in the output."""
    if len(needle) == 0:
        return 0.0
    have, want = Counter(int(t) for t in generated), Counter(int(t) for t in needle)
    return sum(min(c, have[t]) for t, c in want.items()) / len(needle)


# --- tables -----------------------------------------------------------------------------------------

TABLE_COLUMNS: tuple[str, ...] = ("layer", "head", "role", "roles") + SCORE_KEYS


def head_rows(scores: Mapping[str, Any], dominant: np.ndarray) -> list[dict[str, Any]]:
    """One row per head: layer, head, dominant role, every role passed, and every score present (rounded)."""
    dominant = np.asarray(dominant)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items() if k in SCORE_BY_KEY}
    flags = role_flags(arrays) if arrays else {}
    rows = []
    for l in range(dominant.shape[0]):
        for h in range(dominant.shape[1]):
            row: dict[str, Any] = {
                "layer": l, "head": h, "role": ROLES[int(dominant[l, h])],
                "roles": " ".join(r for r in PRIORITY if flags.get(r) is not None and flags[r][l, h]),
            }
            for k in SCORE_KEYS:
                if k in arrays:
                    v = arrays[k][l, h]
                    row[k] = None if not np.isfinite(v) else (int(v) if k == "positional_peak" else round(float(v), 4))
            rows.append(row)
    return rows


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)] or list(TABLE_COLUMNS)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})
    return buf.getvalue()


# --- comparing two runs -----------------------------------------------------------------------------

DEPTH_BINS = ("early", "early-middle", "late-middle", "late")


def relative_depth(n_layers: int) -> np.ndarray:
    """``[L]``: layer / (L - 1) in 0..1 (0 for a single layer)."""
    return np.arange(n_layers) / max(n_layers - 1, 1)


def depth_bin(n_layers: int) -> np.ndarray:
    """``[L]`` int: quarter of the depth each layer falls in (0 = early .. 3 = late)."""
    return np.minimum((relative_depth(n_layers) * len(DEPTH_BINS)).astype(int), len(DEPTH_BINS) - 1)


def compare_roles(dom_a: np.ndarray, dom_b: np.ndarray) -> dict[str, Any]:
    """Which roles appear, move or vanish from run A to run B.

    Same shape: heads are matched by (layer, head); per role, ``kept`` heads have it in both, ``gained``
    only in B, ``lost`` only in A; status ``appears`` (none in A), ``vanishes`` (none in B), ``stays``
    (same heads) or ``moves`` (present in both, on different heads). ``heads`` lists every head whose
    dominant role differs. Different shapes: no head matching; per role the count (and share of all heads)
    per quarter of relative depth, status ``appears``/``vanishes``, ``moves`` when the mean relative depth
    differs by more than 0.125 (half a quarter), else ``stays``.
    """
    a, b = np.asarray(dom_a), np.asarray(dom_b)
    matched = a.shape == b.shape
    roles, heads = [], []
    for role in PRIORITY:
        code = ROLE_CODE[role]
        in_a, in_b = a == code, b == code
        na, nb = int(in_a.sum()), int(in_b.sum())
        if na == 0 and nb == 0:
            continue
        row: dict[str, Any] = {"role": role, "count_a": na, "count_b": nb,
                               "share_a": na / a.size, "share_b": nb / b.size}
        da = _mean_depth(in_a)
        db = _mean_depth(in_b)
        row["depth_a"], row["depth_b"] = da, db
        row["by_depth_a"] = np.bincount(depth_bin(a.shape[0])[np.nonzero(in_a)[0]], minlength=4).tolist()
        row["by_depth_b"] = np.bincount(depth_bin(b.shape[0])[np.nonzero(in_b)[0]], minlength=4).tolist()
        if matched:
            row["kept"] = int((in_a & in_b).sum())
            row["gained"] = int((in_b & ~in_a).sum())
            row["lost"] = int((in_a & ~in_b).sum())
        if na == 0:
            row["status"] = "appears"
        elif nb == 0:
            row["status"] = "vanishes"
        elif matched:
            row["status"] = "stays" if row["gained"] == 0 and row["lost"] == 0 else "moves"
        else:
            row["status"] = "moves" if abs(da - db) > 0.125 else "stays"
        roles.append(row)
    if matched:
        for l, h in zip(*np.nonzero(a != b)):
            ra, rb = ROLES[int(a[l, h])], ROLES[int(b[l, h])]
            change = "appears" if ra == "none" else "vanishes" if rb == "none" else "changes"
            heads.append({"layer": int(l), "head": int(h), "role_a": ra, "role_b": rb, "change": change})
    return {"matched": matched, "shape_a": list(a.shape), "shape_b": list(b.shape), "roles": roles, "heads": heads}


def _mean_depth(mask: np.ndarray) -> float | None:
    layers = np.nonzero(mask)[0]
    if layers.size == 0:
        return None
    return float(relative_depth(mask.shape[0])[layers].mean())


def change_codes(dom_a: np.ndarray, dom_b: np.ndarray) -> np.ndarray:
    """``[L, H]`` int: 0 same role, 1 a role appears (none -> role), 2 vanishes (role -> none), 3 changes."""
    a, b = np.asarray(dom_a), np.asarray(dom_b)
    out = np.zeros(a.shape, dtype=np.int32)
    diff = a != b
    out[diff & (a == 0)] = 1
    out[diff & (b == 0)] = 2
    out[diff & (a != 0) & (b != 0)] = 3
    return out
