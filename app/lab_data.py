"""View data of the extreme-token page and the intervention lab (no torch): lab jobs' records and arrays,
domain sink rates, the counterfactual pair of one head on two prompts."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import state
from backend import domains, extremes, lab_jobs, names, token_text
from backend.lab_spec import DIGEST_RE


def load_info(run_id: str) -> dict[str, Any]:
    """What the lab and extreme-token pages need of a finished text run: model, shape, tokens, prompt labels."""
    m = state.done_manifest(run_id)
    if (m.get("spec") or {}).get("kind") != "text":
        raise state.ViewError("The intervention lab and extreme tokens work on text runs.")
    info = m.get("info") or {}
    prompts = [f"{i}: {p[:70]} ({len(t)} tokens)" for i, (p, t) in enumerate(zip(m["spec"]["inputs"], info["tokens"]))]
    return {"n_layers": info["n_layers"], "n_heads": info["n_heads"], "tokens": info["tokens"], "prompts": prompts,
            "model": (m.get("model") or {}).get("ref")}


def submit(run_id: str, spec: dict[str, Any], client: str = "local") -> tuple[str, dict[str, Any]]:
    state.done_manifest(run_id)  # 404 unknown run, 409 unfinished
    return lab_jobs.submit_lab(state.cache(), state.settings(), run_id, spec, client=client)


def record(run_id: str, job: str) -> dict[str, Any]:
    """A lab job's record on ``run_id`` (LookupError when unknown)."""
    rec = lab_jobs.lab_status(state.cache(), state.settings(), job) if DIGEST_RE.match(job or "") else None
    if rec is None or rec.get("run_id") != run_id:
        raise LookupError(f"unknown lab job {job} for run {run_id}")
    return rec


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """What the API returns of a record."""
    if rec.get("status") == "done":
        return {k: v for k, v in rec.items() if k not in ("created", "finished", "stage", "progress")}
    keep = ("run_id", "job", "spec", "status", "stage", "progress", "error")
    return {k: rec.get(k) for k in keep if k in rec}


def lab_attention(run_id: str, job: str, layer: Any, head: Any) -> dict[str, Any]:
    """One head's pattern before and after an intervention, and their difference (after - before)."""
    rec = record(run_id, job)
    if rec.get("status") != "done" or rec["spec"]["kind"] != "intervene":
        raise state.ViewError("this lab job has no attention patterns (an intervention that has finished has)")
    l = state.check_index("layer", layer, rec["n_layers"])
    h = state.check_index("head", head, rec["n_heads"])
    if l not in rec.get("pattern_layers", []):
        raise state.ViewError(f"layer {l}'s patterns were not stored (prompt too long); stored: {rec['pattern_layers']}")
    before = lab_jobs.get_array(state.cache(), job, names.lab_pattern("before", l))
    after = lab_jobs.get_array(state.cache(), job, names.lab_pattern("after", l))
    if before is None or after is None:
        raise state.NotReady("the lab job's patterns have expired: run it again")
    b, a = before[h].astype(np.float64), after[h].astype(np.float64)
    return {"tokens": token_text.labels(rec["tokens"]), "layer": l, "head": h, "before": b, "after": a, "difference": a - b}


def extreme_view(rec: dict[str, Any], layer: int, eps: float) -> dict[str, Any]:
    """Arrays, the token table of ``layer`` and every sink above ``eps`` of a done extremes record."""
    arrays = {k: np.asarray(rec[k], dtype=np.float64) for k in extremes.COLUMNS}
    return {"arrays": arrays, "table": extremes.token_table(arrays, layer, token_text.labels(rec["tokens"])),
            "sinks": extremes.sink_positions(arrays["received"], rec["causal"], eps)}


def domain_view(rec: dict[str, Any], labels: list[str], eps: float) -> dict[str, Any]:
    """Sink rates per domain (built-in sets and the run's inputs labelled ``labels``) and switching heads."""
    alpha = np.asarray(rec["alpha_first"], dtype=np.float64)  # [N, L, H]
    domain_of = list(rec["builtin_domains"]) + list(labels)
    names_, rates, counts = extremes.domain_rates(alpha, domain_of, eps)
    return {"domains": names_, "rates": rates, "counts": counts, "switch": extremes.switch_score(rates),
            "switching": extremes.switching_heads(rates, names_)}


def run_labels(run_id: str, text: str | None) -> list[str]:
    m = state.done_manifest(run_id)
    return extremes.parse_labels(text, len(m["spec"]["inputs"]), domains.RUN_DOMAIN)


def pair(run_id: str, a: Any, b: Any, layer: Any, head: Any, wait_s: float = 0.0) -> dict[str, Any]:
    """The same head on two prompts of the run, and their difference over the common first ``n`` tokens (patterns
    computed on request: both are asked for before ``state.PatternPending`` is raised for either)."""
    pending = None
    try:
        tok_a, pat_a = state.pattern(run_id, a, layer, head, wait_s)
    except state.PatternPending as exc:
        pending = exc
    tok_b, pat_b = state.pattern(run_id, b, layer, head, 0.0 if pending else wait_s)
    if pending is not None:
        tok_a, pat_a = state.pattern(run_id, a, layer, head, wait_s)
    n = min(len(tok_a), len(tok_b))
    diff = pat_b[:n, :n].astype(np.float64) - pat_a[:n, :n].astype(np.float64)
    return {"tokens_a": token_text.labels(tok_a), "tokens_b": token_text.labels(tok_b), "a": pat_a, "b": pat_b, "difference": diff, "n_common": n}
