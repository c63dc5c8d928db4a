"""What an extreme-token or intervention-lab request is (no torch: the web process imports it).

A request is a small JSON object on a finished text run, validated here against the run's shape and
content-addressed: the SHA-256 of the engine version, run id and canonical request is the RQ job id
and the ``keys.derived`` key of the result, so a repeated request (or a shared link) is a cache hit.

Kinds:

``extremes`` ``{"prompt": P}``
    per layer, head and token of input ``P``: attention received, value norm, value contribution,
    residual norm (:mod:`backend.engine.lab_measures`).
``domains`` ``{}``
    the first token's received attention per input, layer and head over the built-in domain sets
    (:mod:`backend.domains`) and the run's own inputs; sink rates per domain are computed from it at view
    time (the threshold and the run inputs' domain labels live in the URL, not in the job).
``intervene`` ``{"prompt": P, "op": "scale" | "mask" | "mean", "heads": "all" | [[l, h], ...],
"keys": [k, ...], "factor": f}``
    scale (``factor``, default 0.5) or mask the attention to key positions ``keys`` (default ``[0]``,
    the first token) in ``heads`` and renormalise, or replace those heads' outputs by their mean over
    the run's inputs (mean ablation; ``keys`` and ``factor`` unused).
``patch`` ``{"clean": C, "corrupted": K, "answers": ["good", "bad"]}``
    activation patching from input ``C`` into input ``K`` (same number of tokens), metric: the logit
    difference of the answers' first tokens at the last position.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from backend import ENGINE_VERSION
from backend.prune_spec import check_heads, format_off, parse_off
from backend.spec import SpecError, canonical_json

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
KINDS = ("extremes", "domains", "intervene", "patch")
OPS = ("scale", "mask", "mean")
OP_LABELS = {"scale": "scale attention to keys", "mask": "mask keys", "mean": "mean-ablate heads",
             "patch": "activation patching"}
DEFAULT_FACTOR = 0.5
MAX_FACTOR = 1e4
MAX_KEYS = 64
MAX_ANSWER_CHARS = 100


def _index(value: Any, n: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
        raise SpecError(f"{what} must be the index of one of the run's inputs, 0..{n - 1}")
    return value


def check_keys(keys: Any, n_tokens: int) -> list[int]:
    """Key positions: distinct integers inside the prompt; returned sorted."""
    if keys is None:
        return [0]
    if not isinstance(keys, list) or not keys or len(keys) > MAX_KEYS:
        raise SpecError(f"keys must be a non-empty list of at most {MAX_KEYS} token positions, e.g. [0]")
    for k in keys:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n_tokens:
            raise SpecError(f"key position {k!r} is outside the prompt (positions 0..{n_tokens - 1})")
    return sorted(set(keys))


def check_factor(factor: Any) -> float:
    if factor is None:
        return DEFAULT_FACTOR
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor) \
            or not 0 <= factor <= MAX_FACTOR:
        raise SpecError(f"factor must be a number between 0 and {MAX_FACTOR:g} (1 leaves attention unchanged)")
    return float(factor)


def check_spec(raw: Any, n_layers: int, n_heads: int, tokens: list[list[str]]) -> dict[str, Any]:
    """The canonical request for a run of ``n_layers x n_heads`` whose inputs have ``tokens``."""
    if not isinstance(raw, dict):
        raise SpecError('the request must be a JSON object with a "kind": ' + ", ".join(KINDS))
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpecError(f"kind must be one of {', '.join(KINDS)}")
    n = len(tokens)
    allowed = {"extremes": {"prompt"}, "domains": set(), "intervene": {"prompt", "op", "heads", "keys", "factor"},
               "patch": {"clean", "corrupted", "answers"}}[kind]
    unknown = set(raw) - allowed - {"kind"}
    if unknown:
        raise SpecError(f"unknown field(s) for {kind}: {', '.join(sorted(unknown))}")
    if kind == "extremes":
        return {"kind": kind, "prompt": _index(raw.get("prompt", 0), n, "prompt")}
    if kind == "domains":
        return {"kind": kind}
    if kind == "intervene":
        prompt = _index(raw.get("prompt", 0), n, "prompt")
        op = raw.get("op", "scale")
        if op not in OPS:
            raise SpecError(f"op must be one of {', '.join(OPS)}")
        heads = raw.get("heads", "all")
        heads = "all" if heads == "all" else check_heads(heads, n_layers, n_heads)
        if heads == []:
            raise SpecError('heads is empty: choose at least one [layer, head] pair, or "all"')
        out = {"kind": kind, "prompt": prompt, "op": op, "heads": heads}
        if op != "mean":
            out["keys"] = check_keys(raw.get("keys"), len(tokens[prompt]))
        if op == "scale":
            out["factor"] = check_factor(raw.get("factor"))
        return out
    clean = _index(raw.get("clean", 0), n, "clean")
    corrupted = _index(raw.get("corrupted", 1 if n > 1 else 0), n, "corrupted")
    if clean == corrupted:
        raise SpecError("clean and corrupted must be two different inputs of the run")
    if len(tokens[clean]) != len(tokens[corrupted]):
        raise SpecError(f"activation patching needs two inputs with the same number of tokens: input {clean} has "
                        f"{len(tokens[clean])}, input {corrupted} has {len(tokens[corrupted])}")
    answers = raw.get("answers")
    if not (isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers)
            and all(len(a) <= MAX_ANSWER_CHARS for a in answers)):
        raise SpecError('answers must be two non-empty strings, the correct and the wrong answer, e.g. [" Paris", " Rome"]')
    if answers[0] == answers[1]:
        raise SpecError("the two answers must differ")
    return {"kind": kind, "clean": clean, "corrupted": corrupted, "answers": list(answers)}


def lab_digest(run_id: str, spec: dict[str, Any]) -> str:
    """SHA-256 of the engine version, the run and the canonical request."""
    payload = canonical_json({"what": "lab", "engine": ENGINE_VERSION, "run_id": run_id, "spec": spec})
    return hashlib.sha256(payload.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ URL form


def to_query(spec: dict[str, Any]) -> dict[str, str]:
    """The URL query of an intervene / patch request (the lab page's ``mode`` and fields)."""
    if spec["kind"] == "patch":
        return {"mode": "patch", "clean": str(spec["clean"]), "corrupted": str(spec["corrupted"]),
                "good": spec["answers"][0], "bad": spec["answers"][1]}
    q = {"mode": spec["op"], "prompt": str(spec["prompt"]),
         "heads": "all" if spec["heads"] == "all" else format_off(spec["heads"])}
    if "keys" in spec:
        q["keys"] = ",".join(str(k) for k in spec["keys"])
    if "factor" in spec:
        q["factor"] = f"{spec['factor']:g}"
    return q


def _int(text: Any, default: int) -> int:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return default


def from_query(q: dict[str, Any]) -> dict[str, Any]:
    """The (unvalidated) request a lab URL describes; malformed parts fall back to defaults."""
    mode = q.get("mode") if q.get("mode") in OPS + ("patch",) else "scale"
    if mode == "patch":
        return {"kind": "patch", "clean": _int(q.get("clean"), 0), "corrupted": _int(q.get("corrupted"), 1),
                "answers": [str(q.get("good") or ""), str(q.get("bad") or "")]}
    heads_text = str(q.get("heads") or "all")
    out: dict[str, Any] = {"kind": "intervene", "op": mode, "prompt": _int(q.get("prompt"), 0),
                           "heads": "all" if heads_text == "all" else parse_off(heads_text)}
    if mode != "mean":
        keys = [int(k) for k in str(q.get("keys") or "0").split(",") if k.strip().isdigit()]
        out["keys"] = keys or [0]
    if mode == "scale":
        try:
            out["factor"] = float(q.get("factor", DEFAULT_FACTOR))
        except (TypeError, ValueError):
            out["factor"] = DEFAULT_FACTOR
    return out
