"""Head importance, pruning and the per-task losses against direct computations on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from backend.engine.capture import ATTN_IMPLEMENTATION, CaptureSession
from backend.engine.importance_gates import (
    Cancelled,
    evaluate_with_gates,
    head_importance,
    model_shape,
    GateEvaluator,
    pruning_curve,
    pruning_curves,
    top_predictions,
)
from backend.engine.losses import loss_fn, loss_terms, model_task, prepare_targets
from tests.unit.tiny_models import ALL_ARCHS, COMMON, build, sample_inputs

MASK_ID = 4  # the tiny vocabulary has no tokenizer: token 4 plays [MASK]
HEAD_DIM = 32 // 4
PROJECTION = {  # the output projection of layer l (its input is the heads' concatenated outputs)
    "bert": "bert.encoder.layer.{}.attention.output.dense",
    "encoder": "encoder.layer.{}.attention.output.dense",
    "gpt2": "transformer.h.{}.attn.c_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
    "vit": "vit.layers.{}.attention.o_proj",
}


def _build(arch: str, attn: str, dtype: torch.dtype = torch.float32):
    """Tiny models from tiny_models, plus ``encoder``: a headless BertModel (the MiniLM case)."""
    if arch != "encoder":
        return build(arch, attn, dtype)
    torch.manual_seed(0)
    cfg = BertConfig(**COMMON, max_position_embeddings=64)
    cfg._attn_implementation = attn
    return BertModel(cfg).to(dtype).eval()


def _inputs(arch: str, dtype: torch.dtype = torch.float32) -> dict:
    b = sample_inputs("bert" if arch == "encoder" else arch)
    if "pixel_values" in b:
        b["pixel_values"] = b["pixel_values"].to(dtype)
    return b


def _pair(arch: str, dtype: torch.dtype = torch.float32):
    """(ours, eager) with the same weights."""
    eager = _build(arch, "eager", dtype)
    ours = _build(arch, ATTN_IMPLEMENTATION, dtype)
    ours.load_state_dict(eager.state_dict())
    return ours, eager


def _targets(model, batches):
    return prepare_targets(model_task(model), model, batches, mask_token_id=MASK_ID)


def _silence(module: torch.nn.Module, head: int) -> None:
    """Zero the weights that read ``head``'s slice of the projection input (Linear or GPT-2 Conv1D)."""
    sl = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            module.weight[:, sl] = 0
        else:
            module.weight[sl, :] = 0


# ------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit", "encoder"])
def test_gate_gradients_match_central_differences(arch: str) -> None:
    """Per-example gate gradients ([B, L, H] gates) equal central differences (float64), and
    head_importance is the mean of their absolute values."""
    model = _build(arch, ATTN_IMPLEMENTATION, torch.float64)
    task, batch = model_task(model), _inputs(arch, torch.float64)
    tgt = _targets(model, [batch])
    n_layers, n_heads = model_shape(model)

    def f(g: torch.Tensor) -> torch.Tensor:
        with CaptureSession(model, gates=g):
            return loss_terms(task, model, batch, tgt[0]).per_example.sum()

    g = torch.ones(2, n_layers, n_heads, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(f(g), g)
    eps, fd = 1e-2, torch.zeros_like(grad)  # softmax runs in float32 inside the engine: eps 1e-2
    with torch.no_grad():
        for i in range(grad.numel()):
            e = torch.zeros(grad.numel(), dtype=torch.float64)
            e[i] = eps
            e = e.view_as(grad)
            fd.view(-1)[i] = (f(1 + e) - f(1 - e)) / (2 * eps)
    assert fd.abs().max() > 0
    assert ((grad - fd).norm() / fd.norm()).item() < 1e-3
    imp = head_importance(model, [batch], task, targets=tgt, reduction="per_example")  # the paper's eq. 2
    expected = fd.abs().mean(0).numpy()
    assert np.linalg.norm(imp - expected) / np.linalg.norm(expected) < 1e-3


@pytest.mark.parametrize("arch", ["llama", "encoder"])
def test_batching_does_not_change_importance(arch: str) -> None:
    """One padded batch of two == two unpadded batches of one (per-example gradients are exact)."""
    model = _build(arch, ATTN_IMPLEMENTATION, torch.float64)
    task, batch = model_task(model), _inputs(arch)
    singles = [{k: v[i : i + 1, : 9 if i == 0 else 6] for k, v in batch.items()} for i in range(2)]
    for rule in ("per_token", "per_example"):
        together = head_importance(model, [batch], task, targets=_targets(model, [batch]), reduction=rule)
        apart = head_importance(model, singles, task, targets=_targets(model, singles), reduction=rule)
        np.testing.assert_allclose(apart, together, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("arch", ["vit", "encoder"])
def test_targets_from_the_gradient_pass_equal_prepared_targets(arch: str) -> None:
    """Without targets, classifiers and one-batch encoders take them from the pass itself."""
    model = _build(arch, ATTN_IMPLEMENTATION)
    task, batch = model_task(model), _inputs(arch)
    fused = head_importance(model, [batch], task)
    np.testing.assert_array_equal(fused, head_importance(model, [batch], task, targets=_targets(model, [batch])))
    ev = evaluate_with_gates(model, [batch], task, None)
    assert ev == evaluate_with_gates(model, [batch], task, None, targets=_targets(model, [batch]))


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit"])
def test_silent_head_has_zero_importance(arch: str) -> None:
    model = _build(arch, ATTN_IMPLEMENTATION)
    _silence(model.get_submodule(PROJECTION[arch].format(0)), 1)
    batch = _inputs(arch)
    imp = head_importance(model, [batch], model_task(model), targets=_targets(model, [batch]))
    assert imp[0, 1] == 0.0
    assert (np.delete(imp.ravel(), 1) > 0).all()


def test_layer_normalisation() -> None:
    model = _build("gpt2", ATTN_IMPLEMENTATION)
    batch = _inputs("gpt2")
    raw = head_importance(model, [batch], "causal_lm")
    norm = head_importance(model, [batch], "causal_lm", normalise_layers=True)
    np.testing.assert_allclose(np.linalg.norm(norm, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(norm, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)


# ------------------------------------------------------------------------- losses by hand


def _hand_metrics(arch: str, eager, batch: dict, tgt: dict) -> tuple[float, float | None, float]:
    """Loss, perplexity, accuracy computed directly from the eager model's outputs."""
    with torch.no_grad():
        if arch in ("gpt2", "llama"):
            logits = eager(**batch).logits.double()
            nll, hits, n = 0.0, 0, 0
            for row in range(2):
                length = int(batch["attention_mask"][row].sum())
                pred, gold = logits[row, : length - 1], batch["input_ids"][row, 1:length]
                nll += F.cross_entropy(pred, gold, reduction="sum").item()
                hits += int((pred.argmax(-1) == gold).sum())
                n += length - 1
            return nll / n, math.exp(nll / n), hits / n
        if arch == "bert":
            logits = eager(input_ids=tgt["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
            where = tgt["labels"] != -100
            pred, gold = logits[where], tgt["labels"][where]
            nll = F.cross_entropy(pred, gold).item()
            return nll, math.exp(nll), (pred.argmax(-1) == gold).double().mean().item()
        if arch == "vit":
            logits = eager(pixel_values=batch["pixel_values"]).logits.double()
            nll = F.cross_entropy(logits, batch["labels"]).item()
            return nll, None, (logits.argmax(-1) == batch["labels"]).double().mean().item()
        hidden = eager(**batch).last_hidden_state.double()  # encoder
        m = batch["attention_mask"].double().unsqueeze(-1)
        z = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
        logits = z @ tgt["targets"].double().T / 0.05
        nll = F.cross_entropy(logits, torch.arange(2)).item()
        return nll, None, (logits.argmax(-1) == torch.arange(2)).double().mean().item()


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "vit", "encoder"])
def test_gate_zero_equals_zeroing_projection_input(arch: str) -> None:
    """evaluate_with_gates with gate (1, 2) at 0 == the eager model with that head's slice of the
    output projection's input zeroed by a forward pre-hook, loss computed by hand."""
    ours, eager = _pair(arch)
    batch = _inputs(arch)
    if arch == "vit":
        batch["labels"] = torch.tensor([0, 2])
    tgt = _targets(ours, [batch])
    gates = torch.ones(model_shape(ours))
    gates[1, 2] = 0.0
    got = evaluate_with_gates(ours, [batch], model_task(ours), gates, targets=tgt)

    def zero_head(module, args):
        x = args[0].clone()
        x[..., 2 * HEAD_DIM : 3 * HEAD_DIM] = 0
        return (x, *args[1:])

    handle = eager.get_submodule(PROJECTION[arch].format(1)).register_forward_pre_hook(zero_head)
    try:
        loss, ppl, acc = _hand_metrics(arch, eager, {k: v for k, v in batch.items()}, tgt[0])
    finally:
        handle.remove()
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(acc)
    if ppl is None:
        assert got["perplexity"] is None
    else:
        assert got["perplexity"] == pytest.approx(ppl, rel=1e-5)
    # and loss_fn, the scalar used for gradients, agrees with the data-set loss on one batch
    with torch.no_grad(), CaptureSession(ours, gates=gates):
        assert loss_fn(model_task(ours), ours, batch, tgt[0]).item() == pytest.approx(loss, rel=1e-5)


def test_classifier_falls_back_to_own_predictions() -> None:
    model = _build("vit", ATTN_IMPLEMENTATION)
    batch = _inputs("vit")
    tgt = _targets(model, [batch])
    assert tgt[0]["label_source"] == "model"
    with torch.no_grad():
        assert torch.equal(tgt[0]["labels"], model(**batch).logits.argmax(-1))
    assert evaluate_with_gates(model, [batch], "classifier", None, targets=tgt)["accuracy"] == 1.0
    assert _targets(model, [{**batch, "labels": torch.tensor([1, 1])}])[0]["label_source"] == "given"


def test_masked_positions_are_seeded_and_skip_special_tokens() -> None:
    model = _build("bert", ATTN_IMPLEMENTATION)
    batch = _inputs("bert")
    batch["input_ids"][:, 0] = 2  # a [CLS]-like token, declared special below
    a = prepare_targets("masked_lm", model, [batch], mask_token_id=MASK_ID, special_token_ids=[0, 2])[0]
    b = prepare_targets("masked_lm", model, [batch], mask_token_id=MASK_ID, special_token_ids=[0, 2])[0]
    c = prepare_targets("masked_lm", model, [batch], mask_token_id=MASK_ID, special_token_ids=[0, 2],
                        seed=1)[0]
    assert torch.equal(a["labels"], b["labels"]) and not torch.equal(a["labels"], c["labels"])
    picked = a["labels"] != -100
    assert picked.sum(1).tolist() == [max(1, round(0.15 * 8)), max(1, round(0.15 * 5))]
    assert not picked[:, 0].any() and not picked[1, 6:].any()  # never special, never padding
    assert (a["input_ids"][picked] == MASK_ID).all() and torch.equal(a["input_ids"][~picked],
                                                                     batch["input_ids"][~picked])
    assert torch.equal(a["labels"][picked], batch["input_ids"][picked])
    with pytest.raises(ValueError, match="mask token"):
        prepare_targets("masked_lm", model, [batch])


def test_encoder_needs_two_prompts() -> None:
    model = _build("encoder", ATTN_IMPLEMENTATION)
    one = {k: v[:1] for k, v in _inputs("encoder").items()}
    with pytest.raises(ValueError, match="two prompts"):
        prepare_targets("encoder", model, [one])


# ----------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("order", ["importance", "reverse", "random"])
def test_pruning_curve_shapes(order: str) -> None:
    model = _build("gpt2", ATTN_IMPLEMENTATION)
    batches = [_inputs("gpt2")]
    steps: list[tuple[float, str]] = []
    curve = pruning_curve(model, batches, "causal_lm", order=order, step_fraction=0.25, seeds=(0, 1, 2),
                          progress=lambda d, n: steps.append((d, n)))
    assert curve["n_removed"] == [0, 2, 4, 6, 8]
    fr = curve["fractions"]
    assert fr[0] == 0.0 and fr[-1] == 1.0 and all(a < b for a, b in zip(fr, fr[1:]))
    for key in ("loss", "perplexity", "accuracy"):
        assert len(curve[key]) == len(fr)
    full = evaluate_with_gates(model, batches, "causal_lm", None)
    empty = evaluate_with_gates(model, batches, "causal_lm", torch.zeros(2, 4))
    assert curve["loss"][0] == pytest.approx(full["loss"]) and curve["loss"][-1] == pytest.approx(empty["loss"])
    fracs = [f for f, _ in steps]
    assert fracs[-1] == 1.0 and fracs == sorted(fracs) and len(fracs) >= (2 if order == "random" else 5)
    assert all(isinstance(stage, str) and "pruning" in stage for _, stage in steps)
    if order == "random":
        assert np.asarray(curve["per_seed"]["loss"]).shape == (3, 5)
        assert curve["loss_std"][0] == 0.0 and len(curve["loss_std"]) == 5
        orders = curve["removed"]
    else:
        orders = [curve["removed"]]
    for removed in orders:
        assert sorted(map(tuple, removed)) == [(l, h) for l in range(2) for h in range(4)]


def test_importance_order_removes_least_important_first() -> None:
    model = _build("llama", ATTN_IMPLEMENTATION)
    batches = [_inputs("llama")]
    imp = head_importance(model, batches, "causal_lm", normalise_layers=True)
    curve = pruning_curve(model, batches, "causal_lm", step_fraction=0.25)
    first = {tuple(x) for x in curve["removed"][:2]}
    lowest = {divmod(int(i), 4) for i in np.argsort(imp.ravel(), kind="stable")[:2]}
    assert first == lowest
    reverse = pruning_curve(model, batches, "causal_lm", order="reverse", step_fraction=0.25, recompute=False)
    assert {tuple(x) for x in reverse["removed"][:2]} == {divmod(int(i), 4) for i in np.argsort(-imp.ravel())[:2]}


def test_cancel_stops_between_batches() -> None:
    model = _build("gpt2", ATTN_IMPLEMENTATION)
    with pytest.raises(Cancelled):
        head_importance(model, [_inputs("gpt2")], "causal_lm", should_cancel=lambda: True)


# ------------------------------------------------------------------------- tasks, top-k


@pytest.mark.parametrize(
    "model_cls, cfg, task",
    [
        (BertModel, BertConfig(**COMMON), "encoder"),
        (BertForSequenceClassification, BertConfig(**COMMON, num_labels=3), "classifier"),
        (ViTModel, ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64, image_size=16, patch_size=4), "encoder"),
        (ViTForImageClassification, ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                              intermediate_size=64, image_size=16, patch_size=4,
                                              num_labels=3), "classifier"),
    ],
)
def test_model_task_for_extra_classes(model_cls, cfg, task) -> None:
    assert model_task(model_cls(cfg)) == task


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_model_task_for_tiny_models(arch: str) -> None:
    expected = {"bert": "masked_lm", "roberta": "masked_lm", "vit": "classifier"}.get(arch, "causal_lm")
    assert model_task(build(arch, ATTN_IMPLEMENTATION)) == expected


def test_model_task_rejects_regression() -> None:
    with pytest.raises(ValueError, match="single-label"):
        model_task(BertForSequenceClassification(BertConfig(**COMMON, num_labels=1)))


def test_top_predictions_match_eager_softmax() -> None:
    ours, eager = _pair("gpt2")
    row = {k: v[1:2] for k, v in _inputs("gpt2").items()}  # padded: real length 6
    gates = torch.ones(2, 4)
    top = top_predictions(ours, row, "causal_lm", gates, k=5)
    with torch.no_grad():
        probs = torch.softmax(eager(**row).logits[0, 5].double(), -1)
    ref = torch.topk(probs, 5)
    assert [t for t, _ in top] == ref.indices.tolist()
    np.testing.assert_allclose([p for _, p in top], ref.values.numpy(), rtol=1e-5)
    ours_b = _build("bert", ATTN_IMPLEMENTATION)
    masked = {k: v[:1].clone() for k, v in _inputs("bert").items()}
    masked["input_ids"][0, 3] = MASK_ID
    at_mask = top_predictions(ours_b, masked, "masked_lm", None, k=3, mask_token_id=MASK_ID)
    assert at_mask == top_predictions(ours_b, masked, "masked_lm", None, k=3, position=3)
    classes = top_predictions(_build("vit", ATTN_IMPLEMENTATION), {k: v[:1] for k, v in _inputs("vit").items()},
                              "classifier", None, k=5)
    assert len(classes) == 3 and sum(p for _, p in classes) == pytest.approx(1.0)


def _assert_same_curve(got: dict, ref: dict, rel: float) -> None:
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        if key in ("loss", "perplexity", "accuracy", "loss_std", "perplexity_std", "accuracy_std"):
            if value is None:
                assert got[key] is None
            else:
                # a standard deviation of nearly equal losses amplifies rounding: absolute tolerance there
                atol = rel * float(np.max(np.abs(ref[key[:-4]]))) if key.endswith("_std") else 1e-12
                np.testing.assert_allclose(got[key], value, rtol=rel, atol=atol, err_msg=key)
        elif key == "per_seed":
            for k2 in value:
                np.testing.assert_allclose(np.asarray(got[key][k2], dtype=float), np.asarray(value[k2], dtype=float),
                                           rtol=rel, err_msg=k2)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("arch,task", [("llama", "causal_lm"), ("bert", "masked_lm"), ("encoder", "encoder")])
def test_batched_curves_equal_unbatched(arch: str, task: str) -> None:
    """Every order's curve from the batched evaluator (gate settings as extra batch rows, several per
    pass, shared points once) equals the one-pass-per-setting reference: same heads removed, same
    metrics up to float rounding."""
    model = _build(arch, ATTN_IMPLEMENTATION)
    assert model_task(model) == task
    inputs = _inputs(arch)
    batches = [{k: v[:1] for k, v in inputs.items()}, {k: v[1:] for k, v in inputs.items()}]  # two batches
    targets = _targets(model, batches)
    ev = GateEvaluator(model, batches, task, targets, max_tokens=40)  # forces several passes per batch
    got = pruning_curves(model, batches, task, step_fraction=0.25, evaluator=ev)
    ref_passes = 0
    for order in ("importance", "reverse", "random"):
        ref = pruning_curve(model, batches, task, order=order, step_fraction=0.25, targets=targets, batched=False)
        _assert_same_curve(got[order], ref, 1e-5)
        ref_passes += len(ref["n_removed"]) * (3 if order == "random" else 1) * len(batches)
    assert ev.passes < ref_passes / 2  # the point of batching: far fewer passes for the same numbers


def test_gate_evaluator_importance_equals_head_importance() -> None:
    model = _build("gpt2", ATTN_IMPLEMENTATION)
    batches = [_inputs("gpt2")]
    gates = torch.ones(2, 4)
    gates[1, 2] = 0
    ev = GateEvaluator(model, batches, "causal_lm", _targets(model, batches))
    (imp, n, metrics), (imp2, n2, metrics2) = ev.run([torch.ones(2, 4), gates], True)
    for rule in ("per_token", "per_example"):
        np.testing.assert_allclose(imp[rule].numpy() / n[rule],
                                   head_importance(model, batches, "causal_lm", reduction=rule), rtol=1e-5)
        np.testing.assert_allclose(imp2[rule].numpy() / n2[rule],
                                   head_importance(model, batches, "causal_lm", gates=gates, reduction=rule), rtol=1e-5)
    assert metrics["loss"] == pytest.approx(evaluate_with_gates(model, batches, "causal_lm", None)["loss"], rel=1e-6)
    assert metrics2["loss"] == pytest.approx(evaluate_with_gates(model, batches, "causal_lm", gates)["loss"], rel=1e-6)
    passes = ev.passes
    assert ev.run([gates], False)[0][2] == metrics2 and ev.passes == passes  # memoised


def _ragged(arch: str) -> dict:
    """Four right-padded rows of 9, 3, 3 and 4 real tokens (one batch, padded to 9)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (4, 9), generator=g)
    mask = torch.zeros(4, 9, dtype=torch.long)
    for row, n in enumerate((9, 3, 3, 4)):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_length_groups_cut_padding() -> None:
    from backend.engine.importance_gates import length_groups

    batch = _ragged("llama")
    groups, targets = length_groups("causal_lm", [batch], [{"task": "causal_lm"}])
    assert [g["input_ids"].shape for g in groups] == [(3, 4), (1, 9)]  # rows 1, 2, 3 cut to 4; row 0 alone
    assert sum(g["input_ids"].numel() for g in groups) == 21 < batch["input_ids"].numel() == 36
    assert torch.equal(groups[0]["input_ids"], batch["input_ids"][1:4, :4])
    assert len(targets) == 2
    unpadded = {"input_ids": batch["input_ids"][:1], "attention_mask": batch["attention_mask"][:1]}
    same, _ = length_groups("causal_lm", [unpadded], [{"task": "causal_lm"}])
    assert same[0] is unpadded


@pytest.mark.parametrize("arch,task", [("llama", "causal_lm"), ("bert", "masked_lm"), ("encoder", "encoder")])
def test_evaluator_on_length_groups_equals_the_padded_batch(arch: str, task: str) -> None:
    """The evaluator regroups rows by length; importance and metrics equal the one-pass reference on the
    original padded batch (the sums run over the same rows)."""
    model = _build(arch, ATTN_IMPLEMENTATION)
    batches = [_ragged(arch)]
    targets = _targets(model, batches)
    ev = GateEvaluator(model, batches, task, targets)
    assert len(ev.batches) == 2
    gates = torch.ones(2, 4)
    gates[0, 1] = 0
    (imp, n, metrics), = ev.run([gates], True)
    for rule in ("per_token", "per_example"):
        np.testing.assert_allclose(imp[rule].numpy() / n[rule],
                                   head_importance(model, batches, task, gates=gates, targets=targets,
                                                   reduction=rule), rtol=1e-5, atol=1e-9)
    ref = evaluate_with_gates(model, batches, task, gates, targets=targets)
    assert metrics["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert metrics["accuracy"] == ref["accuracy"] and metrics["count"] == ref["count"]


@pytest.mark.parametrize("batched", [True, False])
def test_last_step_needs_no_ranking(batched: bool, monkeypatch) -> None:
    """The step before the last removes every head left, so no gradient pass ranks them: the curves (every point)
    and the heads removed at each step are those of ranking after every step, one gradient pass fewer per order;
    the last step's heads are listed in the latest ranking's order."""
    from backend.engine import importance_gates as ig

    model = _build("llama", ATTN_IMPLEMENTATION)
    batches = [_inputs("llama")]
    targets = _targets(model, batches)
    grads: list[bool] = []
    real_pass = ig._pass

    def counting_pass(*args, **kwargs):
        grads.append(bool(args[5]))
        return real_pass(*args, **kwargs)

    def run() -> dict:
        grads.clear()
        if batched:
            ev = GateEvaluator(model, batches, "causal_lm", targets)
            real_eval = ev._evaluate
            ev._evaluate = lambda todo, grad, progress: (grads.append(grad), real_eval(todo, grad, progress))[1]
            return pruning_curves(model, batches, "causal_lm", ("importance", "reverse"), step_fraction=0.25,
                                  evaluator=ev)
        monkeypatch.setattr(ig, "_pass", counting_pass)
        return {o: pruning_curve(model, batches, "causal_lm", order=o, step_fraction=0.25, targets=targets,
                                 batched=False) for o in ("importance", "reverse")}

    got, got_grads = run(), list(grads)
    monkeypatch.setattr(ig, "_needs_ranking", lambda counts, k, recompute, ranked: counts[k] < counts[-1])
    ref, ref_grads = run(), list(grads)
    assert sum(ref_grads) - sum(got_grads) == (1 if batched else 2)  # one ranking pass fewer per order
    for order in ("importance", "reverse"):
        g, r = got[order], ref[order]
        assert g["n_removed"] == r["n_removed"] == [0, 2, 4, 6, 8]
        for key in ("loss", "perplexity", "accuracy"):
            np.testing.assert_allclose(g[key], r[key], rtol=1e-6, atol=0, err_msg=key)
        for a, b in zip(g["n_removed"][:-1], g["n_removed"][1:]):
            assert sorted(map(tuple, g["removed"][a:b])) == sorted(map(tuple, r["removed"][a:b]))
        assert g["removed"][:6] == r["removed"][:6]
