#!/usr/bin/env python
"""Train the tiny demo image classifier shipped in ``assets/models/digits-vit``.

A 4-layer ViT (32x32 input, 4x4 patches -> 64 patch tokens + CLS) trained from
scratch on scikit-learn's bundled ``load_digits`` data set (1,797 8x8
grayscale hand-written digits, values 0..16).  Runs offline on CPU::

    .venv/bin/python scripts/train_demo_vit.py

Preprocessing is done *by the saved image processor itself*: each digit is
rendered as an 8x8 ``L`` PIL image (0..16 scaled to 0..255, white strokes on a
black background) and passed through the ``ViTImageProcessor`` config saved
next to the model (convert to RGB, bilinear resize to 32x32, rescale 1/255,
normalise with the training-set mean/std).  Training therefore sees exactly
what ``AutoImageProcessor.from_pretrained(folder)`` produces at inference.

Split: ``train_test_split(test_size=0.2, stratify=y, random_state=0)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "assets" / "models" / "digits-vit"
SEED = 0


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
    return d.data, d.target, tr, te


def render_pil(row: np.ndarray):
    """One load_digits row (64 values in 0..16) -> 8x8 uint8 grayscale PIL image."""
    from PIL import Image

    arr = np.clip(np.round(np.asarray(row, dtype=np.float64).reshape(8, 8) * 255.0 / 16.0), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def make_processor(mean: float, std: float):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_convert_rgb=True,  # grayscale "L" images -> 3 identical channels
        do_resize=True,
        size={"height": 32, "width": 32},
        resample=2,  # PIL.Image.BILINEAR
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[mean] * 3,
        image_std=[std] * 3,
    )


def preprocess(processor, rows: np.ndarray) -> torch.Tensor:
    imgs = [render_pil(r) for r in rows]
    return processor(images=imgs, return_tensors="pt")["pixel_values"]


def augment(x: torch.Tensor, gen: torch.Generator, bg: float) -> torch.Tensor:
    """Random small rotation / scale / shift (applied to normalised tensors)."""
    b = x.size(0)
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(b, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 0.12
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + bg


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, x.size(0), batch_size):
        logits = model(pixel_values=x[i : i + batch_size]).logits
        loss += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i : i + batch_size]).sum().item()
    return loss / x.size(0), correct / x.size(0)


def force_eager_attention(config_path: Path) -> None:
    """Make ``from_pretrained`` default to eager attention (SDPA returns no
    attention maps, which Attention Atlas needs).  save_pretrained never writes
    ``attn_implementation``, so add it by hand; callers can still override."""
    cfg = json.loads(config_path.read_text())
    cfg["attn_implementation"] = "eager"
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def cls_attention_stats(model, x: torch.Tensor) -> dict:
    model.eval()
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        att = model(pixel_values=x, output_attentions=True).attentions  # L x (B,H,65,65)
    finally:
        model.set_attn_implementation(prev)
    stats = []
    for a in att:
        cls_row = a[:, :, 0, 1:]  # CLS -> patches
        ent = -(cls_row.clamp_min(1e-12) * cls_row.clamp_min(1e-12).log()).sum(-1).mean(0)
        self_att = torch.diagonal(a, dim1=-2, dim2=-1).mean(dim=(0, 2))
        stats.append({"cls_to_patch_entropy": [round(v, 3) for v in ent.tolist()],
                      "mean_self_attention": [round(v, 3) for v in self_att.tolist()]})
    return {"max_entropy_uniform": round(math.log(64), 3), "per_layer": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="training device; final evaluation always runs on CPU")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    os.environ["PYTHONHASHSEED"] = str(SEED)
    torch.use_deterministic_algorithms(True)

    import transformers
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    t0 = time.time()
    X, y, tr, te = load_split()

    # Normalisation statistics of the training images after resize + rescale.
    raw = preprocess(make_processor(0.0, 1.0), X[tr])
    mean, std = round(raw.mean().item(), 4), round(raw.std().item(), 4)
    processor = make_processor(mean, std)
    x_tr, x_te = preprocess(processor, X[tr]), preprocess(processor, X[te])
    y_tr, y_te = torch.as_tensor(y[tr]), torch.as_tensor(y[te])
    bg = (0.0 - mean) / std
    print(f"train={len(tr)} test={len(te)} mean={mean} std={std} pixel_values={tuple(x_tr.shape)}", flush=True)

    config = ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=args.hidden,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=2 * args.hidden,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )
    model = ViTForImageClassification(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    steps_per_epoch = math.ceil(len(tr) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = 3 * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    gen = torch.Generator().manual_seed(SEED)
    curve = []
    step = 0
    t_train = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=gen)
        run_loss, run_correct = 0.0, 0
        for i in range(0, len(tr), args.batch_size):
            bi = perm[i : i + args.batch_size]
            xb, yb = augment(x_tr[bi], gen, bg).to(args.device), y_tr[bi].to(args.device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(pixel_values=xb).logits
            loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            run_loss += loss.item() * len(bi)
            run_correct += (logits.argmax(-1) == yb).sum().item()
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            te_loss, te_acc = evaluate(model, x_te.to(args.device), y_te.to(args.device))
            curve.append({"epoch": epoch + 1, "train_loss_aug": round(run_loss / len(tr), 4),
                          "train_acc_aug": round(run_correct / len(tr), 4),
                          "heldout_loss": round(te_loss, 4), "heldout_acc": round(te_acc, 4)})
            print(f"epoch {epoch + 1:3d} {curve[-1]} elapsed {time.time() - t_train:.0f}s", flush=True)
    train_seconds = time.time() - t_train

    model = model.cpu()
    out_dir: Path = args.out
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)  # safetensors by default
    processor.save_pretrained(out_dir)
    force_eager_attention(out_dir / "config.json")

    # Verify through the saved artefacts, exactly as a user / the app would.
    proc2 = AutoImageProcessor.from_pretrained(out_dir)
    model2 = AutoModelForImageClassification.from_pretrained(out_dir)
    x_te2 = preprocess(proc2, X[te])
    assert torch.equal(x_te2, x_te), "reloaded processor preprocesses differently"
    te_loss, te_acc = evaluate(model2, x_te2, y_te)
    tr_loss, tr_acc = evaluate(model2, x_tr, y_tr)
    with torch.no_grad():
        pred = torch.cat([model2(pixel_values=x_te2[i : i + 256]).logits.argmax(-1) for i in range(0, len(te), 256)])
    confusion = np.zeros((10, 10), dtype=int)
    for t_, p_ in zip(y_te.tolist(), pred.tolist()):
        confusion[t_, p_] += 1
    attn = cls_attention_stats(model2, x_te2[:64])
    print(f"held-out (reloaded, PIL->processor): loss {te_loss:.4f} acc {te_acc:.4f}; train acc {tr_acc:.4f}",
          flush=True)

    report = {
        "model": "digits-vit",
        "architecture": "ViTForImageClassification",
        "task": "image classification (10 digit classes)",
        "dataset": {
            "name": "sklearn.datasets.load_digits (UCI optical hand-written digits, 8x8, values 0..16)",
            "num_images": int(len(y)),
            "rendering": "8x8 'L' PIL image, value*255/16 rounded to uint8 (white digit on black background)",
        },
        "split": {
            "method": "sklearn train_test_split(test_size=0.2, stratify=y, random_state=0) on row indices",
            "train": int(len(tr)),
            "heldout": int(len(te)),
        },
        "preprocessing": {
            "processor": "ViTImageProcessor (saved in this folder)",
            "steps": "convert RGB, bilinear resize 8x8->32x32, rescale 1/255, normalise",
            "image_mean": [mean] * 3,
            "image_std": [std] * 3,
            "note": "mean/std computed on the training images after resize+rescale",
        },
        "config": {
            "image_size": 32, "patch_size": 4, "num_patches": 64, "hidden_size": args.hidden,
            "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 2 * args.hidden,
        },
        "params": n_params,
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "steps": total,
            "optimizer": "AdamW(wd=0.05), 3 warmup epochs, cosine to 0, grad clip 1.0, label smoothing 0.1",
            "peak_lr": args.lr,
            "augmentation": "random rotation +-12 deg, scale +-10%, shift +-6% (on 32x32 tensors)",
            "seed": SEED,
            "threads": args.threads,
            "device": args.device,
            "curve": curve,
        },
        "metrics": {
            "heldout_accuracy": round(te_acc, 5),
            "heldout_correct": int((pred == y_te).sum().item()),
            "heldout_loss": round(te_loss, 5),
            "train_accuracy": round(tr_acc, 5),
            "chance_accuracy": 0.1,
            "heldout_confusion_matrix": confusion.tolist(),
            "evaluated_via": "render_pil -> AutoImageProcessor.from_pretrained(folder) -> "
                             "AutoModelForImageClassification.from_pretrained(folder)",
        },
        "attention_diagnostics": attn,
        "seconds": {"train": round(train_seconds, 1), "total": round(time.time() - t0, 1)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(render_readme(report))
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"saved to {out_dir} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f}s", flush=True)


def render_readme(r: dict) -> str:
    m, c, t, p = r["metrics"], r["config"], r["training"], r["preprocessing"]
    errors = r["split"]["heldout"] - m["heldout_correct"]
    return f"""# digits-vit

A **tiny demo** Vision Transformer for Attention Atlas, trained from scratch so
the app has a small, offline image model whose attention is real. It classifies
8x8 hand-written digits (scikit-learn's `load_digits`), nothing else.

* Architecture: `ViTForImageClassification`, {c['num_hidden_layers']} layers, hidden {c['hidden_size']},
  {c['num_attention_heads']} heads, MLP {c['intermediate_size']}, 32x32 input with {c['patch_size']}x{c['patch_size']}
  patches -> {c['num_patches']} patch tokens + CLS (65 tokens), {r['params']:,} parameters (float32).
* Labels: `id2label` = "0".."9".
* Data: {r['dataset']['num_images']} images; stratified 80/20 split with `random_state=0`
  ({r['split']['train']} train / {r['split']['heldout']} held out).
* Preprocessing (`preprocessor_config.json`, `AutoImageProcessor`): convert to RGB, bilinear
  resize to 32x32, rescale 1/255, normalise with mean {p['image_mean'][0]} / std {p['image_std'][0]}
  (training-set statistics). Feed uint8 PIL images of a **white/bright digit on a black
  background**, roughly filling the frame (as in `load_digits`, where 0 = background).
  Dark-on-light images must be inverted first. A `load_digits` row `x` maps to a PIL image via
  `Image.fromarray(np.round(x.reshape(8, 8) * 255 / 16).astype(np.uint8), "L")`.
* Training: {t['epochs']} epochs, batch {t['batch_size']}, AdamW, light affine augmentation,
  device `{t['device']}`, {r['seconds']['train']:.0f} s. Seed {t['seed']}.

## Results (held-out 20%)

| metric | value |
|---|---|
| held-out accuracy | {m['heldout_accuracy']:.4f} ({m['heldout_correct']}/{r['split']['heldout']}, {errors} errors) |
| held-out cross-entropy | {m['heldout_loss']:.4f} |
| train accuracy | {m['train_accuracy']:.4f} |
| chance | 0.10 |

Accuracy was computed by rendering the held-out digits as PIL images and
running them through the saved processor and model (see `training_report.json`
for the confusion matrix). For reference, classic baselines (SVM, k-NN) reach
~98-99% on this data set, so this is a fine but not remarkable classifier. On
arbitrary real-world photos of digits it will do poorly: it only ever saw
these 8x8, centred, size-normalised scans.

## Loading

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification
proc = AutoImageProcessor.from_pretrained("assets/models/digits-vit")
model = AutoModelForImageClassification.from_pretrained("assets/models/digits-vit")
out = model(**proc(pil_image, return_tensors="pt"), output_attentions=True)
```

`config.json` sets `attn_implementation: "eager"` so attention maps are returned
by default. Without torchvision installed, transformers uses the PIL backend of
the processor (as during training); the torchvision backend may differ by
rounding in the resize.

Reproduce with `python scripts/train_demo_vit.py` (torch {r['versions']['torch']},
transformers {r['versions']['transformers']}).
"""


if __name__ == "__main__":
    main()
