"""Head importance and pruning curves (Michel, Levy, Neubig, NeurIPS 2019; docs/REFERENCES.md section 2).

A gate ``xi[l, h]`` (1 by default) multiplies each head's output before the output projection (the
capture engine's gates). Two ways to take the absolute value (:data:`REDUCTIONS`), both from the same
backward pass:

* ``"per_token"`` (default; the authors' released code: ``calculate_head_importance`` in
  ``classifier_eval.py`` of pmichel31415's pytorch-pretrained-BERT fork, branch ``paul``, and ``prune.py`` of
  their fairseq fork): the gradient of the loss with respect to a head's output at *each position*,
  dotted with that output (= ``dL/d xi[l, h, t]`` for a gate per position), taken in absolute value per
  token, summed over positions and examples, divided by the number of tokens:
  ``I = sum_x sum_t |dL(x)/d xi_t| / #tokens``;
* ``"per_example"`` (the paper's eq. 2, ``I = E_x |dL(x)/d xi|``; Attention Atlas <= engine 4): the
  absolute value of each example's gate gradient (the sum over positions of the per-token ones),
  averaged over examples.

The rankings differ (opposite-signed positions cancel in the second). HuggingFace's ``run_bertology.py``
(often mistaken for the authors' code) takes ``|.|`` of each *batch* gradient, which neither rule does.
The released ``classifier_eval.py`` writes the per-position product as ``einsum("bhli,bhlj->bhl")``
(sum of the gradient times sum of the output, a typo for the dot product that fairseq's ``prune.py`` and the
gate derivative use); we follow the dot product. The loss ``L(x)`` per model type is documented in
:mod:`backend.engine.losses`; the per-example losses are summed (no mean over the batch), as the
released ``loss = model(...).sum()``.

Per-example and per-token gradients in one backward pass: the engine gives each layer a leaf gate per
batch row, head and query position (``CaptureSession.token_gates``), valued as the current mask. Rows of
a batch never interact in the forward pass, and every per-example loss ``L(x_b)`` depends only on row
``b`` (the encoder's contrastive targets are fixed and detached), so the gradients of ``sum_b L(x_b)``
are the per-example ones exactly: batching changes the cost, not the numbers. (A model whose rows
interact, e.g. a mixture-of-experts with capacity limits, would break this; none of the supported
families do.) Padded positions get no gradient and are not counted as tokens.

Pruning (paper section 4): remove ``step_fraction`` of all heads per step, lowest importance first,
recomputing importance over the remaining heads after each step (``recompute=True``; not before the last
step, which removes every head left whatever their ranking: :func:`_needs_ranking`); a layer may
lose all its heads, as in the paper (the residual stream carries on). With ``normalise_layers`` the
scores are divided by their l2 norm within each layer over the remaining heads (the paper's default).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from backend import vocab
from backend.engine.cancel import Cancelled  # noqa: F401  (one class: the worker catches it; re-exported)
from backend.engine.capture import CaptureSession
from backend.engine.losses import (
    metrics_from,
    model_inputs,
    model_output,
    prepare_targets,
    targets_from_output,
    terms_from_output,
)

Progress = Callable[[float, str], None] | None  # (fraction done in [0, 1], stage), as in analyze.py
ShouldCancel = Callable[[], bool] | None
ORDERS = ("importance", "random", "reverse")
REDUCTIONS: dict[str, str] = {r.name: f"{r.label}: {r.source}" for r in vocab.IMPORTANCE_RULES}
DEFAULT_REDUCTION = vocab.IMPORTANCE_RULES[0].name


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"importance rule must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def model_shape(model: nn.Module) -> tuple[int, int]:
    """``(n_layers, n_heads)`` (query heads) from the config."""
    cfg = model.config.get_text_config()
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


def _gates(model: nn.Module, gates) -> torch.Tensor:
    """``gates [L, H]`` (tensor, array, nested lists or None for all ones) as a float tensor."""
    n_layers, n_heads = model_shape(model)
    if gates is None:
        gates = torch.ones(n_layers, n_heads)
    g = gates.detach() if torch.is_tensor(gates) else torch.as_tensor(np.asarray(gates, dtype=np.float64))
    if tuple(g.shape) != (n_layers, n_heads):
        raise ValueError(f"gates must have shape {(n_layers, n_heads)}, got {tuple(g.shape)}")
    wide = next(model.parameters()).dtype == torch.float64  # float64 models keep float64 gates
    return g.to(next(model.parameters()).device, torch.float64 if wide else torch.float32)


def _batch_size(batch: dict) -> int:
    return next(v.shape[0] for v in model_inputs(batch).values() if torch.is_tensor(v))


class _EvalMode:
    """Eval mode (no dropout) for the duration, restoring the caller's mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def _fused_targets(task: str, batch: dict, out: torch.Tensor) -> dict:
    """Targets from this very pass's outputs (valid only at all-one gates, where they equal the
    ungated outputs bit for bit): saves the separate ungated forward of ``prepare_targets``."""
    if task == "classifier" and batch.get("labels") is not None:
        return {"task": task, "labels": batch["labels"].long(), "label_source": "given"}
    return targets_from_output(task, out if task == "classifier" else [out])[0]


def _can_fuse(task: str, batches: list[dict], gates: torch.Tensor) -> bool:
    """Classifiers: targets are per batch. Encoders: they span all batches, so one batch only."""
    ones = bool((gates == 1).all())
    return ones and (task == "classifier" or (task == "encoder" and len(batches) == 1))


def _real_positions(batch: dict, shape: tuple[int, int], device) -> torch.Tensor:
    """``[B, T]`` bool: the real (unpadded) query positions of a batch."""
    mask = batch.get("attention_mask")
    if mask is None or tuple(mask.shape) != shape:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return mask.to(device).bool()


def _pass(model, batches, task, targets, gates, grad, should_cancel=None, progress=None):
    """One pass over the data at ``gates [L, H]``: metrics, and with ``grad`` the summed gate gradients
    ``{"per_example": sum_x |dL(x)/d xi|, "per_token": sum_x sum_t |dL(x)/d xi_t|}`` (each ``[L, H]``) and
    ``{"per_example": #examples with a loss, "per_token": #their real tokens}``. ``targets=None``: taken
    from the pass's own outputs (see :func:`_can_fuse`)."""
    n_layers, n_heads = gates.shape
    imp = {r: torch.zeros(n_layers, n_heads, dtype=torch.float64) for r in REDUCTIONS}
    counts = {r: 0 for r in REDUCTIONS}
    loss_sum, count, correct = 0.0, 0, 0
    with _EvalMode(model):
        for i, batch in enumerate(batches):
            tgt = None if targets is None else targets[i]
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")
            token_gates: dict[int, torch.Tensor] | None = {} if grad else None
            with torch.set_grad_enabled(grad), CaptureSession(model, gates=gates, token_gates=token_gates) as session:
                out = model_output(task, model, batch, tgt)
            session.check_captured()
            tgt = _fused_targets(task, batch, out) if tgt is None else tgt
            terms = terms_from_output(task, out, batch, tgt)
            if grad:
                w = terms.weight  # [B] examples that have a loss
                leaves = [token_gates[layer] for layer in range(n_layers)]
                grads = torch.autograd.grad((terms.per_example * w).sum(), leaves)  # L x [B, H, T, 1]
                g = torch.stack([x[..., 0] for x in grads], dim=1).detach().to("cpu", torch.float64)  # [B, L, H, T]
                real = _real_positions(batch, (g.shape[0], g.shape[-1]), "cpu")  # [B, T]
                g = g * real[:, None, None, :]
                keep = w.detach().to("cpu")
                imp["per_example"] += g.sum(-1).abs()[keep].sum(0)
                imp["per_token"] += g.abs().sum(-1)[keep].sum(0)
                counts["per_example"] += int(keep.sum())
                counts["per_token"] += int(real[keep].sum())
            loss_sum, count, correct = loss_sum + terms.loss_sum, count + terms.count, correct + terms.correct
            if progress is not None:
                progress((i + 1) / len(batches), f"head importance: batch {i + 1}/{len(batches)}")
    return imp, counts, metrics_from(task, loss_sum, count, correct)


def ones_gates(model: nn.Module) -> torch.Tensor:
    """All-one gates ``[L, H]`` (every head on) on the model's device, in the dtype the gates use."""
    return _gates(model, None)


def importance_scores(imp: dict, counts: dict, reduction: str) -> np.ndarray:
    """The importance ``[L, H]`` of ``reduction`` from the sums of a gradient pass (:func:`_pass`,
    :meth:`GateEvaluator.run`)."""
    return imp[reduction].numpy() / max(counts[reduction], 1)


# ------------------------------------------------------------------ batched gate settings

MAX_PASS_TOKENS = 2048
"""Rows x positions of one batched pass (gate settings x prompts); bounds the logits ([tokens, vocab]) and
activations a pass holds. A batch alone may exceed it (one setting per pass, as unbatched)."""


def _rows_of(x, g: int):
    """``x [B, ...]`` tiled ``g`` times along dim 0 (row ``j * B + b`` is setting ``j``, example ``b``)."""
    return x.repeat(g, *([1] * (x.dim() - 1))) if torch.is_tensor(x) and x.dim() > 0 else x


def _tile(task: str, batch: dict, tgt: dict, g: int) -> tuple[dict, dict]:
    """A batch and its targets repeated for ``g`` gate settings (rows never interact: see the module doc)."""
    if g == 1:
        return batch, tgt
    tiled = {k: _rows_of(v, g) for k, v in batch.items()}
    if task == "masked_lm":
        tgt = {**tgt, "input_ids": _rows_of(tgt["input_ids"], g), "labels": _rows_of(tgt["labels"], g)}
    elif task == "classifier":
        tgt = {**tgt, "labels": _rows_of(tgt["labels"], g)}
    elif task == "encoder":
        tgt = {**tgt, "index": _rows_of(tgt["index"], g)}
    return tiled, tgt


PAD_SLACK = 1.25
"""A length group's padded size may exceed its real tokens by this factor (see :func:`length_groups`)."""


def _take(x, rows: torch.Tensor, width: int, n: int, t: int):
    """Rows ``rows`` of ``x`` (a ``[B]`` or ``[B, T, ...]`` tensor; anything else as it is), cut to ``width``
    positions when its second dimension is the batch's ``t`` positions."""
    if not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] != n:
        return x
    x = x[rows.to(x.device)]
    return x[:, :width] if x.dim() >= 2 and x.shape[1] == t else x


def length_groups(task: str, batches: list[dict], targets: list[dict],
                  slack: float = PAD_SLACK) -> tuple[list[dict], list[dict]]:
    """The same rows regrouped so that little compute goes to padding: each right-padded text batch is split
    into groups of rows of similar real length (rows sorted by length; a group grows while its padded size
    stays within ``slack`` x its real tokens) and every group is cut to its longest row. Rows never
    interact and every number is a sum over rows, so the metrics and importance sums are those of the
    original batches up to float rounding; image batches and unpadded batches are returned as they are.
    Four prompts of 69, 20, 18 and 22 tokens: 135 positions per pass instead of 276."""
    out_b, out_t = [], []
    for batch, tgt in zip(batches, targets):
        mask = batch.get("attention_mask")
        if mask is None or mask.dim() != 2 or bool(mask.all()):
            out_b.append(batch)
            out_t.append(tgt)
            continue
        n, t = mask.shape
        lengths = mask.long().sum(1).cpu()
        right = torch.arange(t)[None, :] < lengths[:, None]
        if not torch.equal(mask.bool().cpu(), right):
            out_b.append(batch)  # not right-padded: leave it
            out_t.append(tgt)
            continue
        order = torch.argsort(lengths, stable=True).tolist()
        groups: list[list[int]] = []
        for i in order:
            cur = groups[-1] if groups else None
            if cur is not None:
                size = (len(cur) + 1) * int(lengths[i])
                if size <= slack * (int(lengths[cur].sum()) + int(lengths[i])):
                    cur.append(i)
                    continue
            groups.append([i])
        if len(groups) == 1 and int(lengths.max()) == t:
            out_b.append(batch)
            out_t.append(tgt)
            continue
        for g in groups:
            rows = torch.tensor(sorted(g), dtype=torch.long)
            width = max(1, int(lengths[rows].max()))
            out_b.append({k: _take(v, rows, width, n, t) for k, v in batch.items()})
            out_t.append({k: _take(v, rows, width, n, t) if k != "targets" else v for k, v in tgt.items()})
    return out_b, out_t


def _batch_tokens(batch: dict) -> int:
    ids = batch.get("input_ids")
    return int(ids.numel()) if torch.is_tensor(ids) else _batch_size(batch)


class GateEvaluator:
    """Metrics (and optionally per-example importance) of the model at many gate settings ``[L, H]``,
    several settings per forward pass: each batch is tiled once per setting with per-row gates
    ``[G * B, L, H]``. Rows never interact, so every setting's numbers are those of its own pass
    (:func:`_pass`) up to float rounding. Results are memoised by setting, so the points shared by
    several curves (all heads, no heads) are evaluated once. The batches are regrouped by length
    (:func:`length_groups`), so padding costs little.
    """

    def __init__(self, model: nn.Module, batches: list[dict], task: str, targets: list[dict],
                 should_cancel: ShouldCancel = None, max_tokens: int = MAX_PASS_TOKENS) -> None:
        self.model, self.task = model, task
        self.batches, self.targets = length_groups(task, batches, targets)
        self.should_cancel, self.max_tokens = should_cancel, max_tokens
        self.n_layers, self.n_heads = model_shape(model)
        self._memo: dict[tuple[bytes, bool], tuple[dict, dict, dict]] = {}
        self.passes = 0  # forward passes run (for benchmarks and progress)

    def _key(self, gates: torch.Tensor, grad: bool) -> tuple[bytes, bool]:
        return gates.detach().to("cpu", torch.float64).numpy().tobytes(), grad

    def cached(self, gates: torch.Tensor, grad: bool) -> tuple[dict, dict, dict] | None:
        """A memoised result (a gradient result serves a metrics-only request too)."""
        hit = self._memo.get(self._key(gates, True))
        return hit if hit is not None or grad else self._memo.get(self._key(gates, False))

    def run(self, settings: list[torch.Tensor], grad: bool, progress: Callable[[int], None] | None = None
            ) -> list[tuple[dict, dict, dict]]:
        """``(importance sums, counts, metrics)`` per setting ``[L, H]``, as :func:`_pass` returns them
        (sums ``{rule: [L, H] float64}``, zeros without ``grad``). ``progress(n_new)`` after each pass."""
        todo, seen = [], set()
        for g in settings:
            key = self._key(g, grad)
            if self.cached(g, grad) is None and key not in seen:
                seen.add(key)
                todo.append(g)
        if todo:
            self._evaluate(todo, grad, progress)
        return [self.cached(g, grad) for g in settings]

    def _evaluate(self, todo: list[torch.Tensor], grad: bool, progress) -> None:
        n_set = len(todo)
        shape = (self.n_layers, self.n_heads)
        imp = [{r: torch.zeros(shape, dtype=torch.float64) for r in REDUCTIONS} for _ in todo]
        n_ex = [{r: 0 for r in REDUCTIONS} for _ in todo]
        sums = np.zeros((n_set, 3))  # loss sum, count, correct
        stack = torch.stack([g.detach() for g in todo])  # [G, L, H]
        with _EvalMode(self.model):
            for batch, tgt in zip(self.batches, self.targets):
                b = _batch_size(batch)
                per_pass = max(1, self.max_tokens // max(_batch_tokens(batch), 1))
                for j0 in range(0, n_set, per_pass):
                    if self.should_cancel is not None and self.should_cancel():
                        raise Cancelled("cancelled")
                    j1 = min(n_set, j0 + per_pass)
                    k = j1 - j0
                    tiled, ttgt = _tile(self.task, batch, tgt, k)
                    g = stack[j0:j1].repeat_interleave(b, dim=0)  # [k * B, L, H]
                    token_gates: dict[int, torch.Tensor] | None = {} if grad else None
                    with torch.set_grad_enabled(grad), CaptureSession(self.model, gates=g,
                                                                      token_gates=token_gates) as session:
                        out = model_output(self.task, self.model, tiled, ttgt)
                    session.check_captured()
                    terms = terms_from_output(self.task, out, tiled, ttgt)
                    if grad:  # as _pass: per-token leaf gates, both rules
                        w = terms.weight
                        leaves = [token_gates[layer] for layer in range(self.n_layers)]
                        grads = torch.autograd.grad((terms.per_example * w).sum(), leaves)  # L x [kB, H, T, 1]
                        gt = torch.stack([x[..., 0] for x in grads], dim=1).detach().to("cpu", torch.float64)
                        real = _real_positions(tiled, (gt.shape[0], gt.shape[-1]), "cpu")  # [kB, T]
                        gt = gt * real[:, None, None, :] * w.detach().to("cpu")[:, None, None, None]
                        per_ex, per_tok = gt.sum(-1).abs(), gt.abs().sum(-1)  # [kB, L, H]
                        n_tok = (real & w.detach().to("cpu")[:, None]).sum(1)  # [kB]
                    rs = terms.row_sum.cpu().view(k, b).sum(1).numpy()
                    rc = terms.row_count.cpu().view(k, b).sum(1).numpy()
                    rh = terms.row_correct.cpu().view(k, b).sum(1).numpy()
                    wn = terms.weight.cpu().view(k, b).sum(1).numpy()
                    for j in range(k):
                        sums[j0 + j] += (rs[j], rc[j], rh[j])
                        if grad:
                            rows = slice(j * b, (j + 1) * b)
                            imp[j0 + j]["per_example"] += per_ex[rows].sum(0)
                            imp[j0 + j]["per_token"] += per_tok[rows].sum(0)
                            n_ex[j0 + j]["per_example"] += int(wn[j])
                            n_ex[j0 + j]["per_token"] += int(n_tok[rows].sum())
                    self.passes += 1
                    del out, terms
                    if progress is not None:
                        progress(k if batch is self.batches[-1] else 0)
        for j, g in enumerate(todo):
            metrics = metrics_from(self.task, float(sums[j, 0]), int(sums[j, 1]), int(sums[j, 2]))
            self._memo[self._key(g, grad)] = (imp[j], n_ex[j], metrics)


def _normalise(imp: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
    """Divide each layer's scores by their l2 norm (over the ``alive`` heads only)."""
    x = imp if alive is None else np.where(alive, imp, 0.0)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-20)


def head_importance(
    model: nn.Module,
    batches: list[dict],
    task: str,
    normalise_layers: bool = False,
    progress: Progress = None,
    should_cancel: ShouldCancel = None,
    *,
    targets: list[dict] | None = None,
    gates=None,
    reduction: str = DEFAULT_REDUCTION,
) -> np.ndarray:
    """``I [L, H]`` at ``gates`` (default all 1) by ``reduction`` (:data:`REDUCTIONS`; module docstring).

    ``targets`` from :func:`backend.engine.losses.prepare_targets` (computed with defaults when None;
    for classifiers, and encoders given one batch, at all-one gates they come from the gradient pass
    itself, identical and one forward cheaper); ``progress(fraction, stage)`` after each batch;
    ``should_cancel()`` is polled between batches. Cost: one forward + backward per batch, whatever
    the batch size (per-example gates).
    """
    out = head_importance_all(model, batches, task, progress, should_cancel, targets=targets, gates=gates)
    out = out[check_reduction(reduction)]
    return _normalise(out) if normalise_layers else out


def head_importance_all(
    model: nn.Module, batches: list[dict], task: str, progress: Progress = None, should_cancel: ShouldCancel = None,
    *, targets: list[dict] | None = None, gates=None,
) -> dict[str, np.ndarray]:
    """Both rules of :data:`REDUCTIONS` from one pass: ``{"per_token": [L, H], "per_example": [L, H]}``
    (not normalised)."""
    base = _gates(model, gates)
    if targets is None and not _can_fuse(task, batches, base):
        targets = prepare_targets(task, model, batches)
    imp, counts, _ = _pass(model, batches, task, targets, base, True, should_cancel, progress)
    return {r: importance_scores(imp, counts, r) for r in REDUCTIONS}


def evaluate_with_gates(model: nn.Module, batches: list[dict], task: str, gates, *, targets=None) -> dict:
    """``loss``, ``perplexity`` (LMs, else None), ``accuracy``, ``count`` at ``gates [L, H]``."""
    base = _gates(model, gates)
    if targets is None and not _can_fuse(task, batches, base):
        targets = prepare_targets(task, model, batches)
    _, _, metrics = _pass(model, batches, task, targets, base, False)
    return metrics


def _needs_ranking(counts: list[int], k: int, recompute: bool, ranked: bool) -> bool:
    """Whether step ``k`` of a deterministic curve runs the gradient pass that ranks the heads left: after each
    step with ``recompute`` (else once), except when the next step removes every head left (all of them go,
    whatever their order: the gradient would choose nothing; they are listed in the latest ranking's order).
    The first ranking always runs."""
    if k + 1 >= len(counts):
        return False
    return not ranked or (recompute and counts[k + 1] < counts[-1])


def _order(scores: np.ndarray, alive: np.ndarray, descending: bool) -> np.ndarray:
    """Flat indices of alive heads, lowest score first (highest with ``descending``), ties by index."""
    flat = np.flatnonzero(alive.ravel())
    s = scores.ravel()[flat]
    return flat[np.argsort(-s if descending else s, kind="stable")]


def pruning_curve(
    model: nn.Module,
    batches: list[dict],
    task: str,
    order: str = "importance",
    step_fraction: float = 0.1,
    seeds=(0, 1, 2),
    recompute: bool = True,
    progress: Progress = None,
    *,
    should_cancel: ShouldCancel = None,
    targets: list[dict] | None = None,
    normalise_layers: bool = True,
    reduction: str = DEFAULT_REDUCTION,
    batched: bool = True,
) -> dict:
    """Metric against the fraction of heads removed, from 0 to 1 in steps of ``step_fraction``.

    ``reduction`` is the importance rule that orders the heads (:data:`REDUCTIONS`).

    ``order``: ``"importance"`` (least important first), ``"reverse"`` (most important first) or
    ``"random"`` (one random order per seed; ``loss``/``perplexity``/``accuracy`` are the means over
    seeds, ``*_std`` the population standard deviations, ``per_seed`` the raw curves). Returns lists
    ``fractions``, ``n_removed``, ``loss``, ``perplexity`` (None for non-LMs), ``accuracy`` and
    ``removed`` (``[layer, head]`` in removal order; one list per seed for random).
    ``progress(fraction, stage)`` after each step; ``should_cancel()`` is polled between batches.
    ``batched``: evaluate several gate settings per forward pass (:class:`GateEvaluator`; the same
    numbers up to float rounding); ``False`` runs one pass per setting (the reference, for benchmarks).
    """
    if batched:
        return pruning_curves(model, batches, task, (order,), step_fraction, seeds, recompute, progress,
                              should_cancel=should_cancel, targets=targets, normalise_layers=normalise_layers,
                              reduction=reduction)[order]
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}")
    if not 0 < step_fraction <= 1:
        raise ValueError("step_fraction must be in (0, 1]")
    check_reduction(reduction)
    if targets is None:
        targets = prepare_targets(task, model, batches)
    n_layers, n_heads = model_shape(model)
    total = n_layers * n_heads
    step = max(1, int(round(step_fraction * total)))
    counts = list(range(0, total, step)) + [total]  # heads removed at each point
    base = _gates(model, None)
    out = {
        "task": task, "order": order, "recompute": recompute, "step_fraction": step_fraction,
        "n_layers": n_layers, "n_heads": n_heads, "n_removed": counts,
        "fractions": [c / total for c in counts], "label_source": targets[0].get("label_source"),
        "reduction": reduction,
    }
    if order == "random":
        return {**out, **_random_curves(model, batches, task, targets, base, counts, seeds, progress,
                                        should_cancel)}
    curve: dict[str, list] = {"loss": [], "perplexity": [], "accuracy": []}
    alive = np.ones((n_layers, n_heads), dtype=bool)
    removed: list[list[int]] = []
    scores = None
    for k, c in enumerate(counts):
        need = _needs_ranking(counts, k, recompute, scores is not None)
        gates = base * torch.as_tensor(alive, dtype=base.dtype, device=base.device)
        imp, n, metrics = _pass(model, batches, task, targets, gates, need, should_cancel)
        for key in curve:
            curve[key].append(metrics[key])
        if progress is not None:
            progress((k + 1) / len(counts), f"pruning ({order}): step {k + 1}/{len(counts)}")
        if c == total:
            break
        if need:
            scores = importance_scores(imp, n, reduction)
            scores = _normalise(scores, alive) if normalise_layers else scores
        for flat in _order(scores, alive, order == "reverse")[: counts[k + 1] - c]:
            layer, head = divmod(int(flat), n_heads)
            alive[layer, head] = False
            removed.append([layer, head])
    if task not in ("causal_lm", "masked_lm"):
        curve["perplexity"] = None
    return {**out, **curve, "removed": removed}


def _check_curve_args(orders, step_fraction) -> None:
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise ValueError(f"order must be one of {ORDERS}")
    if not 0 < step_fraction <= 1:
        raise ValueError("step_fraction must be in (0, 1]")


def pruning_curves(
    model: nn.Module,
    batches: list[dict],
    task: str,
    orders=ORDERS,
    step_fraction: float = 0.1,
    seeds=(0, 1, 2),
    recompute: bool = True,
    progress: Progress = None,
    *,
    should_cancel: ShouldCancel = None,
    targets: list[dict] | None = None,
    normalise_layers: bool = True,
    reduction: str = DEFAULT_REDUCTION,
    evaluator: GateEvaluator | None = None,
) -> dict[str, dict]:
    """:func:`pruning_curve` for several ``orders`` at once, ``{order: curve}``, batched: the deterministic
    orders advance in lock-step (step ``k`` of every order in one pass, with the gradients that choose the
    next heads), every random setting (seeds x steps) is known up front and evaluated in a few wide
    passes, and points shared by the curves (all heads, no heads) are computed once. ``evaluator``: a
    :class:`GateEvaluator` on the same batches and targets whose memo may already hold the all-heads pass."""
    orders = tuple(orders)
    _check_curve_args(orders, step_fraction)
    check_reduction(reduction)
    if evaluator is not None:
        targets = evaluator.targets
    elif targets is None:
        targets = prepare_targets(task, model, batches)
    ev = evaluator or GateEvaluator(model, batches, task, targets, should_cancel)
    n_layers, n_heads = model_shape(model)
    total = n_layers * n_heads
    step = max(1, int(round(step_fraction * total)))
    counts = list(range(0, total, step)) + [total]
    base = _gates(model, None)
    det = [o for o in orders if o != "random"]
    units = len(det) * len(counts) + (len(seeds) * len(counts) if "random" in orders else 0)
    done = [0]

    def tick(n: int, stage: str) -> None:
        done[0] += n
        if progress is not None:
            progress(min(done[0] / units, 1.0), stage)

    head = {"recompute": recompute, "reduction": reduction, "step_fraction": step_fraction,
            "n_layers": n_layers, "n_heads": n_heads,
            "n_removed": counts, "fractions": [c / total for c in counts],
            "label_source": targets[0].get("label_source")}
    state = {o: {"alive": np.ones((n_layers, n_heads), dtype=bool), "removed": [], "scores": None,
                 "curve": {"loss": [], "perplexity": [], "accuracy": []}} for o in det}
    for k, c in enumerate(counts):
        if not det:
            break
        need = _needs_ranking(counts, k, recompute, state[det[0]]["scores"] is not None)
        settings = [base * torch.as_tensor(state[o]["alive"], dtype=base.dtype, device=base.device) for o in det]
        for o, (imp, n, metrics) in zip(det, ev.run(settings, need)):
            st = state[o]
            for key in st["curve"]:
                st["curve"][key].append(metrics[key])
            if c == total:
                continue
            if need:
                scores = importance_scores(imp, n, reduction)
                st["scores"] = _normalise(scores, st["alive"]) if normalise_layers else scores
            for flat in _order(st["scores"], st["alive"], o == "reverse")[: counts[k + 1] - c]:
                layer, hd = divmod(int(flat), n_heads)
                st["alive"][layer, hd] = False
                st["removed"].append([layer, hd])
        tick(len(det), f"pruning ({' and '.join(det)} order): step {k + 1}/{len(counts)}")
    out: dict[str, dict] = {}
    for o in det:
        curve = state[o]["curve"]
        if task not in ("causal_lm", "masked_lm"):
            curve["perplexity"] = None
        out[o] = {"task": task, "order": o, **head, **curve, "removed": state[o]["removed"]}
    if "random" in orders:
        perms = [torch.randperm(total, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
        settings = []
        for perm in perms:
            for c in counts:
                gates = base.flatten().clone()
                gates[perm[:c].to(gates.device)] = 0
                settings.append(gates.view(n_layers, n_heads))
        finished = [0]

        def random_tick(n: int) -> None:
            finished[0] += n
            tick(n, f"pruning (random, {len(seeds)} seeds): {finished[0]}/{len(settings)} gate settings")

        res = ev.run(settings, False, progress=random_tick)
        tick(units - done[0], f"pruning (random, {len(seeds)} seeds): {len(settings)}/{len(settings)} gate settings")
        per_seed: dict[str, list] = {key: [] for key in ("loss", "perplexity", "accuracy")}
        for i in range(len(seeds)):
            rows = res[i * len(counts):(i + 1) * len(counts)]
            for key in per_seed:
                per_seed[key].append([m[key] for _, _, m in rows])
        rnd: dict = {"seeds": list(seeds), "removed": [[list(divmod(int(f), n_heads)) for f in p] for p in perms],
                     "per_seed": per_seed}
        for key, rows in per_seed.items():
            if task not in ("causal_lm", "masked_lm") and key == "perplexity":
                rnd[key] = rnd[f"{key}_std"] = None
                continue
            arr = np.asarray(rows, dtype=np.float64)  # [S, K]
            rnd[key], rnd[f"{key}_std"] = arr.mean(0).tolist(), arr.std(0).tolist()
        out["random"] = {"task": task, "order": "random", **head, **rnd}
    return out


def _random_curves(model, batches, task, targets, base, counts, seeds, progress, should_cancel) -> dict:
    n_layers, n_heads = base.shape
    per_seed: dict[str, list] = {"loss": [], "perplexity": [], "accuracy": []}
    removed = []
    n_steps, done = len(seeds) * len(counts), 0
    for seed in seeds:
        perm = torch.randperm(n_layers * n_heads, generator=torch.Generator().manual_seed(int(seed)))
        removed.append([list(divmod(int(f), n_heads)) for f in perm])
        rows: dict[str, list] = {key: [] for key in per_seed}
        for c in counts:
            gates = base.flatten().clone()
            gates[perm[:c].to(gates.device)] = 0
            _, _, metrics = _pass(model, batches, task, targets, gates.view(n_layers, n_heads), False,
                                  should_cancel)
            for key in rows:
                rows[key].append(metrics[key])
            done += 1
            if progress is not None:
                progress(done / n_steps, f"pruning (random, seed {seed}): step {done}/{n_steps}")
        for key in rows:
            per_seed[key].append(rows[key])
    out: dict = {"seeds": list(seeds), "removed": removed, "per_seed": per_seed}
    for key, rows in per_seed.items():
        if task not in ("causal_lm", "masked_lm") and key == "perplexity":
            out[key] = out[f"{key}_std"] = None
            continue
        arr = np.asarray(rows, dtype=np.float64)  # [S, K]
        out[key], out[f"{key}_std"] = arr.mean(0).tolist(), arr.std(0).tolist()
    return out


def top_predictions(
    model: nn.Module, batch: dict, task: str, gates=None, k: int = 5, position: int = -1, *,
    mask_token_id: int | None = None,
) -> list[tuple[int, float]]:
    """Top-``k`` ``(token_id or class_id, probability)`` for one prompt at ``gates``.

    Causal LM: next token after real position ``position`` (-1: the last real token; negative values
    count from the last real token). Masked LM: at ``position``, or with -1 at the first mask token
    (``mask_token_id``, default ``config.mask_token_id``). Classifier: the classes. Encoders have no
    output distribution (ValueError).
    """
    if _batch_size(batch) != 1:
        raise ValueError("top_predictions takes a batch with one prompt")
    if task == "encoder":
        raise ValueError("a sentence encoder has no output distribution to rank")
    with _EvalMode(model), torch.no_grad(), CaptureSession(model, gates=_gates(model, gates)):
        logits = model(**model_inputs(batch)).logits[0]  # [T, V] or [C]
    if task != "classifier":
        ids = batch["input_ids"][0]
        n = int(batch["attention_mask"][0].sum()) if batch.get("attention_mask") is not None else len(ids)
        if task == "masked_lm" and position == -1:
            mask_id = mask_token_id if mask_token_id is not None else getattr(model.config, "mask_token_id", None)
            hits = (ids[:n] == mask_id).nonzero().flatten() if mask_id is not None else []
            if len(hits) == 0:
                raise ValueError("no mask token in the prompt: pass position= or put a mask token in it")
            pos = int(hits[0])
        else:
            pos = position if position >= 0 else n + position
        if not 0 <= pos < n:
            raise ValueError(f"position {position} is outside the prompt's {n} real tokens")
        logits = logits[pos]
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    top = torch.topk(probs, min(k, probs.shape[-1]))
    return [(int(i), float(p)) for i, p in zip(top.indices, top.values)]
