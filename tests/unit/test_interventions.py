"""Interventions and extreme-token numbers against direct computations on tiny models.

Every reference here is computed without the capture engine: ``attn_implementation="eager"`` with
``output_attentions`` / ``output_hidden_states``, a 2-D attention mask, and forward hooks written in this
file on ``v_proj`` / ``o_proj`` / the blocks (the engine's own hooks are not reused).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine import lab_measures
from backend.engine.capture import CaptureSession
from backend.engine.interventions import HeadReplace, ResidPatch
from tests.unit.tiny_models import VOCAB, build

ARCHS = ("llama", "gpt2", "bert")
T = 9
TOL = {"rtol": 1e-6, "atol": 1e-6}
"""Engine vs eager: the engine's softmax runs in float32 (as eager's does in most models), so float64
models agree to ~1e-8, not to the last bit."""


def _pair(arch: str, seed: int = 0):
    return build(arch, "atlas_capture", torch.float64, seed), build(arch, "eager", torch.float64, seed)


def _ids(seed: int, n: int = T) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def _eager(model, ids, mask=None):
    batch = lab_measures.id_batch([ids], 0)
    if mask is not None:
        batch["attention_mask"] = torch.tensor([mask])
    with torch.no_grad():
        return model(**batch, output_attentions=True, output_hidden_states=True)


def _blocks(model):
    for path in ("model.layers", "transformer.h", "bert.encoder.layer"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError("no blocks")


def _o_proj(model, layer: int):
    """The output projection of a layer (its input is the concatenated head outputs)."""
    block = _blocks(model)[layer]
    if hasattr(block, "self_attn"):
        return block.self_attn.o_proj
    if hasattr(block, "attn"):
        return block.attn.c_proj
    return block.attention.output.dense


# ------------------------------------------------------------------------------------ scaling / masking


@pytest.mark.parametrize("arch", ARCHS)
def test_scaling_by_one_is_a_no_op(arch: str) -> None:
    cap, eag = _pair(arch)
    ids = _ids(1)
    ref = _eager(eag, ids)
    mods = lab_measures.mods_for("scale", None, 2, 4, keys=[0, 3], factor=1.0)
    logits, pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), mods)
    plain, plain_pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), None)
    torch.testing.assert_close(logits, plain, **TOL)  # renormalising rows that sum to 1 up to float32 rounding
    torch.testing.assert_close(logits, ref.logits, **TOL)
    for layer in range(2):
        np.testing.assert_allclose(pats[layer], plain_pats[layer], atol=1e-7)
        np.testing.assert_allclose(pats[layer], ref.attentions[layer][0].numpy(), atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_every_head_equals_a_model_that_never_sees_those_keys(arch: str) -> None:
    """Masked keys 2 and 5 in all heads == the eager model run with those positions masked out."""
    cap, eag = _pair(arch)
    ids = _ids(2)
    mask = [1] * T
    mask[2] = mask[5] = 0
    ref = _eager(eag, ids, mask)
    logits, pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), lab_measures.mods_for("mask", None, 2, 4, keys=[2, 5]))
    torch.testing.assert_close(logits, ref.logits, **TOL)
    for layer in range(2):
        np.testing.assert_allclose(pats[layer], ref.attentions[layer][0].numpy(), atol=1e-7)
        assert np.abs(pats[layer][:, :, [2, 5]]).max() == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_one_head_recomputes_its_softmax_without_the_keys(arch: str) -> None:
    cap, eag = _pair(arch)
    ids = _ids(3)
    ref = _eager(eag, ids)
    mods = lab_measures.mods_for("mask", [[1, 2]], 2, 4, keys=[1, 4])
    _, pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), mods)
    a = ref.attentions[1][0, 2].numpy().copy()  # [T, T] of layer 1 head 2, untouched upstream
    a[:, [1, 4]] = 0.0
    want = a / a.sum(-1, keepdims=True)
    np.testing.assert_allclose(pats[1][2], want, atol=1e-7)
    np.testing.assert_allclose(pats[1][[0, 1, 3]], ref.attentions[1][0, [0, 1, 3]].numpy(), atol=1e-7)
    np.testing.assert_allclose(pats[0], ref.attentions[0][0].numpy(), atol=1e-7)


def test_scaling_renormalises_and_keeps_rows_that_cannot_be() -> None:
    cap, eag = _pair("llama")
    ids = _ids(4)
    ref = _eager(eag, ids).attentions[0][0].numpy()  # [H, T, T]
    _, pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), lab_measures.mods_for("scale", [[0, 1]], 2, 4, keys=[0], factor=3.0))
    a = ref[1].copy()
    a[:, 0] *= 3.0
    np.testing.assert_allclose(pats[0][1], a / a.sum(-1, keepdims=True), atol=1e-7)
    _, masked = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), lab_measures.mods_for("mask", [[0, 1]], 2, 4, keys=[0]))
    np.testing.assert_allclose(masked[0][1][0], ref[1][0], atol=1e-7)  # query 0 sees only key 0: kept as it was
    np.testing.assert_allclose(masked[0][1].sum(-1), 1.0, atol=1e-12)


# ------------------------------------------------------------------------------------ mean ablation


@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_mean_ablation_equals_replacing_the_output_projection_input(arch: str) -> None:
    cap, eag = _pair(arch)
    prompts = [_ids(10, 7), _ids(11, 9), _ids(12, 5)]
    d = 32 // 4
    # reference means: inputs of the output projection (concatenated heads) over every real token
    seen: list[torch.Tensor] = []
    hook = _o_proj(eag, 1).register_forward_pre_hook(lambda m, args: seen.append(args[0][0].detach().clone()))
    try:
        for p in prompts:
            _eager(eag, p)
    finally:
        hook.remove()
    mean = torch.cat(seen).mean(0)  # [H * d]
    ids = _ids(13)

    def replace(module, args):
        x = args[0].clone()
        x[..., 3 * d:4 * d] = mean[3 * d:4 * d]
        return (x,)

    hook = _o_proj(eag, 1).register_forward_pre_hook(replace)
    try:
        want = _eager(eag, ids).logits
    finally:
        hook.remove()
    batches = [lab_measures.id_batch(prompts[:2], 0), lab_measures.id_batch(prompts[2:], 0)]  # padded batch: padding is ignored
    means = lab_measures.head_means(cap, batches)
    got, _ = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), lab_measures.mods_for("mean", [[1, 3]], 2, 4, means=means))
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(got, _eager(eag, ids).logits)


# ------------------------------------------------------------------------------------ patching


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_every_position_of_a_layer_reproduces_the_other_prompt(arch: str) -> None:
    cap, eag = _pair(arch)
    a, b = _ids(20), _ids(21)
    want_b, want_a = _eager(eag, b).logits, _eager(eag, a).logits
    from backend.engine.interventions import ResidRecord

    with torch.no_grad(), ResidRecord(cap, 2) as rec, CaptureSession(cap):
        cap(**lab_measures.id_batch([b], 0))
    for layer in range(2):
        with torch.no_grad(), ResidPatch(cap, 2, {layer: [(0, list(range(T)))]}, {layer: rec.resid[layer][0]}), \
                CaptureSession(cap):
            got = cap(**lab_measures.id_batch([a], 0)).logits
        torch.testing.assert_close(got, want_b, **TOL)
    with torch.no_grad(), ResidPatch(cap, 2, {}, {}), CaptureSession(cap, head_mod=HeadReplace({}, {})):
        got = cap(**lab_measures.id_batch([a], 0)).logits  # patching nothing: the clean run
    torch.testing.assert_close(got, want_a, **TOL)
    with torch.no_grad(), CaptureSession(cap):
        plain = cap(**lab_measures.id_batch([a], 0)).logits
    torch.testing.assert_close(got, plain, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_patching_grids_equal_hooks_written_here(arch: str) -> None:
    cap, eag = _pair(arch)
    clean, corrupted = _ids(30), _ids(31)
    good, bad = 5, 17
    out = lab_measures.patching(cap, clean, corrupted, good, bad)
    ref_clean = _eager(eag, clean)
    ld = lambda logits: float(logits[0, -1, good] - logits[0, -1, bad])  # noqa: E731
    assert out["ld_clean"] == pytest.approx(ld(ref_clean.logits), abs=1e-6)
    assert out["ld_corrupted"] == pytest.approx(ld(_eager(eag, corrupted).logits), abs=1e-6)
    blocks = _blocks(eag)
    for layer, pos in ((0, 0), (1, 4), (1, T - 1)):
        src = ref_clean.hidden_states[layer][0, pos]  # the residual stream entering block `layer`

        def pre(module, args, kwargs, src=src, pos=pos):
            if args:
                h = args[0].clone()
                h[0, pos] = src
                return (h,) + args[1:], kwargs
            h = kwargs["hidden_states"].clone()
            h[0, pos] = src
            return args, {**kwargs, "hidden_states": h}

        hook = blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            assert out["resid"][layer, pos] == pytest.approx(ld(_eager(eag, corrupted).logits), abs=1e-6)
        finally:
            hook.remove()
    d = 8
    for layer, head in ((0, 1), (1, 3)):
        seen = []
        h1 = _o_proj(eag, layer).register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        _eager(eag, clean)
        h1.remove()

        def swap(module, args, head=head, src=seen[0]):
            x = args[0].clone()
            x[..., head * d:(head + 1) * d] = src[..., head * d:(head + 1) * d]
            return (x,)

        h2 = _o_proj(eag, layer).register_forward_pre_hook(swap)
        try:
            assert out["heads"][layer, head] == pytest.approx(ld(_eager(eag, corrupted).logits), abs=1e-6)
        finally:
            h2.remove()
    norm = (out["heads"] - out["ld_corrupted"]) / (out["ld_clean"] - out["ld_corrupted"])
    np.testing.assert_allclose(out["heads_normalised"], norm)


def test_patching_refuses_prompts_of_different_lengths() -> None:
    cap, _ = _pair("llama")
    with pytest.raises(ValueError, match="same length"):
        lab_measures.patching(cap, _ids(1, 5), _ids(2, 6), 3, 4)


# ------------------------------------------------------------------------------------ extreme tokens


def _gu_alpha(att: np.ndarray, causal: bool) -> np.ndarray:
    """``[H, T, T]`` -> ``[H, T]``: mean attention each key gets from the queries that can see it."""
    t = att.shape[-1]
    denom = (t - np.arange(t)) if causal else np.full(t, t)
    return att.sum(axis=1) / denom


@pytest.mark.parametrize("arch, causal", (("llama", True), ("bert", False), ("gpt2", True)))
def test_extreme_token_numbers_equal_independent_hooks(arch: str, causal: bool) -> None:
    cap, eag = _pair(arch)
    ids = _ids(40)
    values: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(_blocks(eag)):
        if arch == "llama":
            proj, kv_heads = block.self_attn.v_proj, 2
        elif arch == "bert":
            proj, kv_heads = block.attention.self.value, 4
        else:
            proj, kv_heads = block.attn.c_attn, 4
        handles.append(proj.register_forward_hook(lambda m, a, o, layer=layer: values.__setitem__(layer, o[0])))
        handles.append(block.register_forward_hook(
            lambda m, a, o, layer=layer: outs.__setitem__(layer, (o[0] if isinstance(o, tuple) else o)[0])))
    try:
        ref = _eager(eag, ids)
    finally:
        for h in handles:
            h.remove()
    got = lab_measures.extreme_tokens(cap, ids, causal)
    for layer in range(2):
        v = values[layer]
        if arch == "gpt2":
            v = v[:, 64:]  # c_attn = [q | k | v]
        v = v.reshape(T, kv_heads, 8).norm(dim=-1).T  # [Hkv, T]
        v = v.repeat_interleave(4 // kv_heads, dim=0).numpy()  # query head h uses kv head h // n_rep
        np.testing.assert_allclose(got["value_norm"][layer], v, rtol=1e-5)
        alpha = _gu_alpha(ref.attentions[layer][0].numpy(), causal)
        np.testing.assert_allclose(got["received"][layer], alpha, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["contribution"][layer], alpha * v, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["resid_norm"][layer], outs[layer].norm(dim=-1).numpy(), rtol=1e-5)
    # the stream leaving block 0 is the one entering block 1 (output_hidden_states[1])
    np.testing.assert_allclose(got["resid_norm"][0], ref.hidden_states[1][0].norm(dim=-1).numpy(), rtol=1e-5)


def test_first_token_alpha_over_a_padded_batch() -> None:
    cap, eag = _pair("llama")
    prompts = [_ids(50, 9), _ids(51, 4), _ids(52, 6)]
    got = lab_measures.first_token_alpha(cap, prompts, 0, batch_size=2)
    for i, p in enumerate(prompts):
        ref = _eager(eag, p)
        for layer in range(2):
            want = ref.attentions[layer][0][:, :, 0].numpy().mean(-1)  # [H]
            np.testing.assert_allclose(got[i, layer], want, rtol=1e-5)


def test_long_prompts_keep_the_patterns_of_a_few_layers_only() -> None:
    from backend.engine import lab_job

    assert lab_job._layers_to_store(30, 9, 100, "all") == list(range(30))  # 2.7 M entries: every layer
    assert lab_job._layers_to_store(30, 9, 600, [[7, 0], [3, 1], [5, 2]]) == [3]  # 3.2 M entries per layer
    assert lab_job._layers_to_store(30, 9, 300, [[7, 0], [3, 1], [5, 2]]) == [3, 5, 7]
    assert lab_job._layers_to_store(30, 9, 2048, "all") == [0]
    cap, eag = _pair("llama")
    ids = _ids(60)
    _, pats = lab_measures.intervened_pass(cap, lab_measures.id_batch([ids], 0), None, keep={1})
    assert list(pats) == [1]
    np.testing.assert_allclose(pats[1], _eager(eag, ids).attentions[1][0].numpy(), atol=1e-7)


def test_scaling_is_the_same_when_attention_is_chunked_over_queries() -> None:
    """Long prompts run with the query rows in chunks: the intervention applies to each chunk alike."""
    from backend.engine.interventions import KeyScale

    cap, _ = _pair("llama")
    batch = lab_measures.id_batch([_ids(70)], 0)
    mod = KeyScale({0: [1, 3], 1: [0]}, [0, 2], 0.3)
    with torch.no_grad(), CaptureSession(cap, weights_mod=mod):
        whole = cap(**batch).logits
    with torch.no_grad(), CaptureSession(cap, weights_mod=mod, chunk_size=2):
        chunked = cap(**batch).logits
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    with torch.no_grad(), CaptureSession(cap):
        plain = cap(**batch).logits
    assert not torch.allclose(whole, plain)
