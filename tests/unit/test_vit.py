"""ViT patch attention: rollout against a plain reference on a tiny ViT's real patterns, CLS->patch maps
and overlays on the patch grid, bilinear upsampling, high-norm tokens, token norms from the runner,
register tokens, sample images and image uploads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import figures_vit, names, sample_images, vit
from backend.settings import Settings
from backend.uploads import UploadError, check_image
from tests.unit.tiny_models import build, sample_inputs

GRID = 4  # tiny ViT: 16x16 images, 4x4 patches -> CLS + 16 patches


@pytest.fixture(scope="module")
def tiny_vit():
    model = build("vit", "eager")
    with torch.no_grad():
        out = model(**sample_inputs("vit"), output_attentions=True, output_hidden_states=True)
    patterns = [a[0].numpy().astype(np.float64) for a in out.attentions]  # image 0: L x [H, T, T]
    return model, patterns, out


def reference_rollout(attentions, head_fusion, discard_ratio):
    """Attention rollout written plainly, the ``spare_cls`` variant: after jacobgil/vit-explain
    (vit_rollout.py) with two documented differences: rows are renormalised (vit-explain's
    ``a / a.sum(dim=-1)`` broadcasts over columns) and the whole CLS row and column are kept when
    discarding (vit-explain keeps only the CLS->CLS entry; the default rule, tested against it in
    tests/unit/test_released_code.py)."""
    n = attentions[0].shape[-1]
    result = np.eye(n)
    for attention in attentions:
        if head_fusion == "mean":
            fused = attention.mean(axis=0)
        elif head_fusion == "max":
            fused = attention.max(axis=0)
        else:
            fused = attention.min(axis=0)
        fused = fused.copy()
        if discard_ratio > 0:
            candidates = [(i, j) for i in range(1, n) for j in range(1, n)]  # not the CLS row or column
            candidates.sort(key=lambda ij: fused[ij])
            for i, j in candidates[: int(len(candidates) * discard_ratio)]:
                fused[i, j] = 0.0
        a = (fused + np.eye(n)) / 2
        for i in range(n):
            a[i] = a[i] / a[i].sum()
        result = a @ result
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rollout_equals_plain_reference_on_tiny_vit(tiny_vit, fusion: str, discard: float) -> None:
    _, patterns, _ = tiny_vit
    got = vit.rollout(patterns, fusion, discard, discard_rule="spare_cls")
    want = reference_rollout(patterns, fusion, discard)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-12)  # a product of row-stochastic matrices
    layout = vit.TokenLayout(n_prefix=1, rows=GRID, cols=GRID)
    grid = vit.rollout_grid(patterns, layout, fusion, discard, "spare_cls")
    assert grid.shape == (GRID, GRID)
    np.testing.assert_allclose(grid.ravel(), want[0, 1:])


def test_rollout_matches_vit_explain_without_discard_when_rows_sum_to_one(tiny_vit) -> None:
    """With mean fusion and no discard every ``(A + I) / 2`` already has unit row sums, so vit-explain's
    normalisation is a no-op and its code (torch, verbatim apart from the discard) must agree."""
    _, patterns, out = tiny_vit
    result = torch.eye(patterns[0].shape[-1], dtype=torch.float64)
    for attention in out.attentions:
        fused = attention[:1].double().mean(axis=1)
        eye = torch.eye(fused.size(-1), dtype=torch.float64)
        a = (fused + 1.0 * eye) / 2
        a = a / a.sum(dim=-1)
        result = torch.matmul(a, result)
    np.testing.assert_allclose(vit.rollout(patterns, "mean", 0.0), result[0].numpy(), atol=1e-6)


def test_rollout_refuses_bad_parameters(tiny_vit) -> None:
    _, patterns, _ = tiny_vit
    with pytest.raises(ValueError, match="fusion"):
        vit.rollout(patterns, "median")
    with pytest.raises(ValueError, match="discard"):
        vit.rollout(patterns, "mean", 1.0)
    with pytest.raises(ValueError):
        vit.rollout([], "mean")
    with pytest.raises(ValueError, match="discard rule"):
        vit.rollout(patterns, "mean", 0.5, discard_rule="keep_all")


def test_cls_patch_attention_has_the_patch_grid_shape(tiny_vit) -> None:
    _, patterns, _ = tiny_vit
    pat = patterns[1]
    maps = vit.cls_patch_attention(pat, GRID, n_prefix=1)
    assert maps.shape == (pat.shape[0], GRID, GRID)
    assert maps[2, 1, 3] == pat[2, 0, 1 + 1 * GRID + 3]
    row = vit.cls_patch_attention(pat[0], (GRID, GRID), 1, query=6)  # where patch r1 c1 attends
    np.testing.assert_array_equal(row.ravel(), pat[0, 6, 1:])
    with pytest.raises(ValueError, match="prefix"):
        vit.cls_patch_attention(pat, 5, n_prefix=1)


def test_upsample_bilinear_equals_torch_interpolate() -> None:
    g = np.random.default_rng(0).random((4, 6))
    up = vit.upsample_bilinear(g, (37, 53))
    ref = torch.nn.functional.interpolate(torch.tensor(g)[None, None], size=(37, 53), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    assert up.shape == (37, 53)
    np.testing.assert_allclose(up, ref, atol=1e-12)
    np.testing.assert_allclose(vit.upsample_bilinear(np.full((3, 3), 0.25), (10, 7)), 0.25)


def test_overlay_draws_the_patch_grid_over_the_image(tiny_vit) -> None:
    from PIL import Image

    _, patterns, _ = tiny_vit
    layout = vit.TokenLayout(n_prefix=1, rows=GRID, cols=GRID)
    buf = io.BytesIO()
    Image.new("RGB", (640, 427), (10, 200, 30)).save(buf, format="PNG")
    uri, w, h = figures_vit.display_image(buf.getvalue(), layout)
    assert uri.startswith("data:image/png;base64,") and (w, h) == (320, 214)
    grid = vit.cls_patch_attention(patterns[0], GRID)[0]
    fig = figures_vit.overlay(uri, w, h, grid, layout, opacity=0.4, selected=(1, 2), marks=[(0, 0)])
    image, heat = fig.data
    assert image.type == "image" and heat.type == "heatmap" and heat.opacity == 0.4
    assert np.asarray(heat.z).shape == figures_vit.heat_size(w, h)
    assert heat.x0 + heat.dx * (len(heat.z[0]) - 0.5) == pytest.approx(w - 0.5)  # spans the image
    assert len(fig.layout.shapes) == 2
    assert figures_vit.patch_from_click(w - 1, 0, w, h, layout) == (0, GRID - 1)
    with pytest.raises(ValueError, match="patch grid"):
        figures_vit.overlay(uri, w, h, np.zeros((3, 3)), layout)
    heads = figures_vit.head_grid(vit.cls_patch_attention(patterns[0], GRID))
    assert len(heads.data) == patterns[0].shape[0] and np.asarray(heads.data[0].z).shape == (GRID, GRID)


def test_high_norm_tokens_rules() -> None:
    rng = np.random.default_rng(1)
    norms = np.concatenate([[50.0], rng.normal(10, 0.5, 64)])  # CLS is large by construction
    norms[1 + 20] = 40.0  # one patch far above the rest
    layout = vit.TokenLayout(n_prefix=1, rows=8, cols=8)
    among = vit.patch_mask(layout)
    for rule in vit.NORM_RULES:
        mask = vit.high_norm_tokens(norms, rule, among)
        assert np.flatnonzero(mask).tolist() == [21], rule  # CLS is never flagged
    assert vit.norm_threshold(norms, "median", among) == pytest.approx(2 * np.median(norms[1:]))
    assert vit.high_norm_tokens(np.stack([norms, norms]), "sd", among).shape == (2, 65)
    assert not vit.high_norm_tokens(np.ones(17), "sd").any()


def test_token_layout_parses_cls_registers_and_patches() -> None:
    toks = ["[CLS]", "[REG0]", "[REG1]"] + [f"patch r{r} c{c}" for r in range(2) for c in range(3)]
    lay = vit.token_layout(toks)
    assert (lay.n_prefix, lay.rows, lay.cols, lay.registers) == (3, 2, 3, (1, 2))
    assert lay.patch_index(1, 2) == 8 and lay.patch_at(8) == (1, 2) and lay.patch_at(0) is None
    with pytest.raises(ValueError, match="not an image run"):
        vit.token_layout(["[CLS]", "hello", "[SEP]"])
    assert names.resid_norm(2, 0) == "prompt.2.blocks.0.resid.norm"  # pinned: the run page's link needs it


def _save_tiny_vit(folder: Path) -> None:
    from transformers import ViTImageProcessor

    build("vit", "eager").save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)


def _images() -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(sample_images.get_sample(k).png)).convert("RGB") for k in ("digit-0", "china")]


@pytest.mark.slow
def test_runner_emits_token_norms_and_sink_metrics_for_a_vit(tmp_path: Path) -> None:
    """Through the runner: stored patterns give the same rollout as eager attention, ``resid.norm`` is the
    hidden-state norm, and the sink metrics work with CLS as the special token."""
    from transformers import AutoImageProcessor

    from backend.engine.analyze import analyze_model

    _save_tiny_vit(tmp_path / "tiny-vit")
    s = Settings(model_roots=(tmp_path,), device="cpu")
    images = _images()
    arrays, info = analyze_model("tiny-vit", images, {"analyses": ["metrics"]}, settings=s)
    layout = vit.token_layout(info.tokens[0])
    assert (info.kind, layout.n_prefix, layout.rows, layout.cols) == ("image", 1, GRID, GRID)

    model = build("vit", "eager")
    pix = AutoImageProcessor.from_pretrained(tmp_path / "tiny-vit")(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pix, output_attentions=True, output_hidden_states=True)
    for p in range(2):
        stored = [arrays[names.attn_pattern(p, l)] for l in range(2)]
        eager = [a[p].numpy() for a in out.attentions]
        np.testing.assert_allclose(vit.rollout(stored, "max", 0.9), vit.rollout(eager, "max", 0.9), atol=1e-5)
        for l in range(2):
            norm = arrays[names.resid_norm(p, l)]
            assert norm.shape == (1 + GRID * GRID,) and norm.dtype == np.float32
            np.testing.assert_allclose(norm, out.hidden_states[l + 1][p].norm(dim=-1).numpy(), rtol=1e-5)
    first, special = arrays[names.metric("sink_first")], arrays[names.metric("sink_special")]
    assert first.shape == (2, 4) and np.isfinite(first).all()
    np.testing.assert_allclose(special, first)  # the only special token of a ViT is CLS at position 0


@pytest.mark.slow
def test_register_tokens_and_cropping_processor(tmp_path: Path) -> None:
    """A DINOv2-with-registers model whose processor crops to 16x16 (config says 32): the tokens follow the
    processed size and list the registers after CLS."""
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from backend.engine.analyze import analyze_model

    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                    image_size=32, patch_size=4, num_register_tokens=2)
    Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path / "tiny-reg")
    BitImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path / "tiny-reg")
    arrays, info = analyze_model("tiny-reg", _images()[:1], None, Settings(model_roots=(tmp_path,), device="cpu"))
    layout = vit.token_layout(info.tokens[0])
    assert info.tokens[0][:3] == ["[CLS]", "[REG0]", "[REG1]"]
    assert (layout.n_prefix, layout.registers, layout.rows, layout.cols) == (3, (1, 2), GRID, GRID)
    assert arrays[names.attn_pattern(0, 1)].shape == (4, 19, 19)
    assert vit.rollout_grid([arrays[names.attn_pattern(0, l)] for l in range(2)], layout).shape == (GRID, GRID)


def test_samples_are_valid_images_and_the_upload_refuses_non_images() -> None:
    s = Settings()
    keys = sample_images.sample_keys()
    assert {"china", "flower"} <= set(keys) and any(k.startswith("digit-") for k in keys)
    assert [o["value"] for o in sample_images.sample_options()] == keys
    for key in ("digit-0", "china"):
        w, h = check_image(f"{key}.png", sample_images.get_sample(key).png, s)
        assert (w, h) == ((8, 8) if key == "digit-0" else (640, 427))
    from sklearn.datasets import load_digits

    from PIL import Image

    digit = np.asarray(Image.open(io.BytesIO(sample_images.get_sample("digit-3").png)))
    np.testing.assert_array_equal(digit, np.round(load_digits().data[3].reshape(8, 8) * 255 / 16))
    with pytest.raises(UploadError, match="not a valid PNG or JPEG"):
        check_image("notes.png", b"these are my notes, not an image", s)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="GIF")
    with pytest.raises(UploadError, match="GIF images are not supported"):
        check_image("anim.png", buf.getvalue(), s)
    with pytest.raises(KeyError):
        sample_images.get_sample("nope")
