"""What a run is: model, inputs and options, validated and canonicalised into a content address."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from backend import ENGINE_VERSION
from backend.settings import Settings
from backend import vocab
from backend.vocab import ANALYSIS_NAMES, INPUT_KINDS, METHOD_NAMES, RAW_MAPS

DTYPES = ("float32", "bfloat16", "float16")
ANALYSES = ANALYSIS_NAMES
DEFAULT_OPTIONS: dict[str, Any] = {
    "dtype": "float32",
    "analyses": ["attention", "metrics"],
    "embedding_methods": [vocab.METHOD_NAMES[0]],
    "max_points_per_head": 20_000,
    "seed": 0,
    "importance_rule": "per_token",
    "retrieval_test": "text",
}
RETRIEVAL_TESTS = vocab.rule_names(vocab.RETRIEVAL_TESTS)
"""Retrieval heads (Wu et al.): the released detector's text protocol (default) or the synthetic copy test
(``backend.roles.RETRIEVAL_TESTS``)."""
RETRIEVAL_TEXT_LIMITS = {"retrieval_needle": 2_000, "retrieval_question": 1_000, "retrieval_answer": 2_000,
                         "retrieval_haystack": 20_000, "retrieval_template": 1_000}
"""Optional texts of the retrieval test (characters at most); absent: the released detector's defaults."""
IMPORTANCE_RULES = vocab.rule_names(vocab.IMPORTANCE_RULES)
"""Head importance (Michel et al.): ``|.|`` per token as the authors' released code (default) or per example
as the paper's eq. 2 (``backend.engine.importance_gates.REDUCTIONS``)."""
MAP_POINTS_RANGE = (100, 50_000)
"""Bounds of ``max_points_per_head`` (queries + keys per head): t-SNE on 50,000 points takes minutes per head."""
DIGEST = re.compile(r"^[0-9a-f]{64}$")
OPTIONAL_OPTIONS = ("labels", "retrieval_needle", "retrieval_question", "retrieval_answer", "retrieval_haystack",
                    "retrieval_template")
"""Options that are absent unless given (so runs without them keep their run ids): ``labels``, one class id
per input, the targets of a classifier's head-importance loss (``backend.engine.losses``)."""


class SpecError(ValueError):
    """A run request that cannot be accepted; the message is shown to the user as is."""


@dataclass(frozen=True)
class RunSpec:
    """A validated analysis request. ``inputs`` are prompts (text runs) or blob digests (image runs)."""

    model: str
    inputs: tuple[str, ...]
    kind: str = "text"
    options: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def run_id_for(spec: RunSpec, model_fingerprint: str) -> str:
    """Content address of a run: same model weights, inputs, options and engine -> same id."""
    payload = canonical_json(
        {"engine": ENGINE_VERSION, "model": model_fingerprint, "spec": spec.canonical()}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def normalise_options(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and reject unknown or ill-typed options."""
    raw = dict(raw or {})
    unknown = set(raw) - set(DEFAULT_OPTIONS) - set(OPTIONAL_OPTIONS)
    if unknown:
        raise SpecError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = {**DEFAULT_OPTIONS, **raw}
    if opts["dtype"] not in DTYPES:
        raise SpecError(f"dtype must be one of {', '.join(DTYPES)}")
    analyses = opts["analyses"]
    if not isinstance(analyses, list) or not all(a in ANALYSES for a in analyses):
        raise SpecError(f"analyses must be a list drawn from {', '.join(ANALYSES)}")
    opts["analyses"] = sorted(set(analyses) | {"attention"} | ({"embedding"} if RAW_MAPS in analyses else set()))
    methods = opts["embedding_methods"]
    if not isinstance(methods, list) or not all(m in METHOD_NAMES for m in methods):
        raise SpecError(f"embedding_methods must be a list drawn from {', '.join(METHOD_NAMES)}")
    opts["embedding_methods"] = sorted(set(methods))
    if "embedding" in opts["analyses"] and not methods:
        raise SpecError(
            f"embedding_methods is empty: choose at least one projection ({', '.join(METHOD_NAMES)}) for the maps"
        )
    if opts.get("labels", ()) is None:
        del opts["labels"]
    elif "labels" in opts:
        labels = opts["labels"]
        if not isinstance(labels, list) or not labels or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in labels
        ):
            raise SpecError("labels must be a non-empty list of non-negative integer class ids, one per input")
    if opts["retrieval_test"] not in RETRIEVAL_TESTS:
        raise SpecError(f"retrieval_test must be one of {', '.join(RETRIEVAL_TESTS)}")
    for name, limit in RETRIEVAL_TEXT_LIMITS.items():
        if name not in opts:
            continue
        text = opts[name]
        if text is None or (isinstance(text, str) and not text.strip()):
            del opts[name]  # empty: the default text
            continue
        if not isinstance(text, str) or "\x00" in text:
            raise SpecError(f"{name} must be a string of text")
        if len(text) > limit:
            raise SpecError(f"{name} has {len(text):,} characters; the limit is {limit:,}")
    template = opts.get("retrieval_template")
    if template is not None and (template.count("{question}") != 1 or
                                 template.replace("{question}", "").count("{") + template.count("}") > 1):
        raise SpecError("retrieval_template must contain {question} once and no other braces")
    if opts.get("retrieval_answer") and not opts.get("retrieval_needle"):
        raise SpecError("retrieval_answer needs retrieval_needle: the answer must be part of the needle")
    if opts["importance_rule"] not in IMPORTANCE_RULES:
        raise SpecError(f"importance_rule must be one of {', '.join(IMPORTANCE_RULES)}")
    for name in ("max_points_per_head", "seed"):
        if not isinstance(opts[name], int) or isinstance(opts[name], bool) or opts[name] < 0:
            raise SpecError(f"{name} must be a non-negative integer")
    lo, hi = MAP_POINTS_RANGE
    if not lo <= opts["max_points_per_head"] <= hi:
        raise SpecError(f"max_points_per_head must be between {lo:,} and {hi:,}")
    return opts


def clean_prompts(prompts: Any, settings: Settings) -> tuple[str, ...]:
    """Validate a list of prompts against the configured limits."""
    if not isinstance(prompts, (list, tuple)):
        raise SpecError("prompts must be a list of strings")
    if not all(isinstance(p, str) for p in prompts):
        raise SpecError("every prompt must be a string")
    cleaned = tuple(p.strip() for p in prompts if p.strip())
    if not cleaned:
        raise SpecError("no prompt given: enter at least one non-empty line of text")
    if len(cleaned) > settings.max_prompts:
        raise SpecError(f"too many prompts: {len(cleaned)} given, the limit is {settings.max_prompts}")
    for i, p in enumerate(cleaned):
        if "\x00" in p:
            raise SpecError(f"prompt {i + 1} contains a NUL byte")
        if len(p) > settings.max_prompt_chars:
            raise SpecError(
                f"prompt {i + 1} has {len(p)} characters; the limit is {settings.max_prompt_chars}"
            )
    return cleaned


def build_spec(model: Any, prompts: Any, options: Any, settings: Settings, kind: str = "text") -> RunSpec:
    """Validate a raw request (from the UI, API or CLI) into a :class:`RunSpec`."""
    if not isinstance(model, str) or not model.strip():
        raise SpecError("model must be a non-empty string")
    if options is not None and not isinstance(options, dict):
        raise SpecError("options must be an object")
    if kind not in INPUT_KINDS:
        raise SpecError(f"kind must be {' or '.join(repr(k) for k in INPUT_KINDS)}")
    inputs = clean_prompts(prompts, settings)
    if kind == "image" and not all(DIGEST.match(d) for d in inputs):
        raise SpecError("the inputs of an image run are the SHA-256 digests (64 hex characters) of uploaded images")
    opts = normalise_options(options)
    if "labels" in opts and len(opts["labels"]) != len(inputs):
        raise SpecError(
            f"labels: {len(opts['labels'])} given for {len(inputs)} input(s) (after dropping empty lines); "
            "give one class id per input"
        )
    return RunSpec(model=model.strip(), inputs=inputs, kind=kind, options=opts)
