#!/usr/bin/env python
"""Train the tiny demo causal LM shipped in ``assets/models/tiny-pydoc-lm``.

The model is a 4-layer Llama-style decoder (grouped-query attention: 4 query
heads sharing 2 key/value heads, RoPE, SwiGLU MLP) trained from scratch on the
English help texts that ship with CPython in ``pydoc_data.topics``.  A small
byte-level BPE tokenizer is trained on the same training split.

Everything runs offline on CPU in a few minutes::

    .venv/bin/python scripts/train_demo_lm.py

Split: topic keys are sorted; every 10th key (index 0, 10, 20, ...) is held
out for validation, the rest is used for tokenizer + model training.

Outputs (``assets/models/tiny-pydoc-lm/``): ``config.json``,
``generation_config.json``, ``model.safetensors``, tokenizer files,
``training_report.json`` and ``README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
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

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "assets" / "models" / "tiny-pydoc-lm"

EOT = "<|endoftext|>"
PAD = "<|pad|>"
VOCAB_SIZE = 1024
CONTEXT = 128
SEED = 0
# Held-out loss is also reported on this many leading validation blocks, so
# the unit test can recompute a subset quickly and compare exactly.
SUBSET_BLOCKS = 32


# --------------------------------------------------------------------------- data


def load_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Deterministic split of pydoc topics: every 10th sorted key is held out."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    train = [(k, topics[k]) for i, k in enumerate(keys) if i % 10 != 0]
    val = [(k, topics[k]) for i, k in enumerate(keys) if i % 10 == 0]
    return train, val


def docs_sha256(docs: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for k, text in docs:
        h.update(k.encode())
        h.update(b"\0")
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


def encode_stream(tokenizer, docs: list[tuple[str, str]]) -> list[int]:
    """``<|endoftext|> doc0 <|endoftext|> doc1 ...`` as one token stream.

    The tokenizer's post-processor prepends ``<|endoftext|>`` (acting as BOS),
    so each document is encoded exactly as a user prompt would be.
    """
    ids: list[int] = []
    for _, text in docs:
        # backend encode == tokenizer(text)["input_ids"], minus the length warning
        ids.extend(tokenizer.backend_tokenizer.encode(text).ids)
    return ids


def make_blocks(ids: list[int], context: int = CONTEXT) -> torch.Tensor:
    n = len(ids) // context
    return torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, blocks.size(0), batch_size):
        x = blocks[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        tgt = x[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += tgt.numel()
    return total / count


def sample_batch(
    train_t: torch.Tensor,
    batch_size: int,
    repeat_frac: float,
    gen: torch.Generator,
    copy_len: tuple[int, int] = (8, 24),
    copy_reps: int = 4,
) -> torch.Tensor:
    """Random 128-token windows of the training stream, some with a copy signal.

    A fraction ``repeat_frac`` of the windows starts with ``s`` repeated
    2..``copy_reps`` times, followed by ordinary pydoc text; ``s`` is
    ``copy_len[0]``..``copy_len[1]`` pydoc tokens drawn
    from random positions of the training stream (pydoc tokens in random
    order).  The repeats can only be predicted by looking back at the earlier
    copy, which is what previous-token + induction heads do.

    Why: the corpus is tiny (~150k tokens).  Trained on plain text only, this
    model memorises the corpus within minutes and forms no induction heads
    (also tried: repeats of verbatim snippets, which are predictable from
    memory, and a single repeat of 16-48 tokens: no induction within 8k GPU
    steps).  Held-out evaluation uses plain held-out text only.
    """
    n = train_t.numel()
    rows = []
    for _ in range(batch_size):
        a = int(torch.randint(0, n - CONTEXT, (1,), generator=gen))
        if torch.rand(1, generator=gen).item() < repeat_frac:
            ln = int(torch.randint(copy_len[0], copy_len[1] + 1, (1,), generator=gen))
            reps = int(torch.randint(2, copy_reps + 1, (1,), generator=gen))
            snip = train_t[torch.randint(0, n, (ln,), generator=gen)]
            prefix = snip.repeat(reps)[: CONTEXT - 16]
            rows.append(torch.cat([prefix, train_t[a : a + CONTEXT - prefix.numel()]]))
        else:
            rows.append(train_t[a : a + CONTEXT])
    return torch.stack(rows)


# --------------------------------------------------------------------- tokenizer


def train_tokenizer(train_docs: list[tuple[str, str]]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([t for _, t in train_docs], trainer=trainer)
    eot_id = tok.token_to_id(EOT)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A",
        pair=f"{EOT} $A {EOT} $B",
        special_tokens=[(EOT, eot_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=None,
        pad_token=PAD,
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )


# ------------------------------------------------------------------- diagnostics


@torch.no_grad()
def attention_diagnostics(model, val_blocks: torch.Tensor, token_pool: torch.Tensor) -> dict:
    """Per-head previous-token and induction scores (eager attention).

    * previous_token: mean attention from position i to i-1 on held-out text.
    * induction: on ``[bos] r r`` with r 50 tokens drawn from random positions
      of the training stream (pydoc tokens in random order), mean
      attention from the second copy of token t to the token right after its
      first occurrence (the classic induction-head pattern).
    """
    model.eval()
    prev_impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        x = val_blocks[:16]
        att = model(input_ids=x, output_attentions=True).attentions  # L x (B,H,T,T)
        prev = []
        for a in att:
            diag = torch.diagonal(a, offset=-1, dim1=-2, dim2=-1)  # (B,H,T-1)
            prev.append(diag.mean(dim=(0, 2)).tolist())

        g = torch.Generator().manual_seed(1234)
        n, reps = 50, 8
        r = token_pool[torch.randint(len(token_pool), (reps, n), generator=g)]
        bos = torch.full((reps, 1), model.config.bos_token_id, dtype=torch.long)
        seq = torch.cat([bos, r, r], dim=1).to(x.device)  # positions: 0 bos, 1..n first, n+1..2n second
        out = model(input_ids=seq, output_attentions=True)
        ind = []
        for a in out.attentions:
            q = torch.arange(n + 1, 2 * n + 1)
            k = q - n + 1  # token after the earlier occurrence
            ind.append(a[:, :, q, k].mean(dim=(0, 2)).tolist())
        logits = out.logits[:, n + 1 : 2 * n].float()
        tgt = seq[:, n + 2 : 2 * n + 1]
        rep_loss_second = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt.reshape(-1)
        ).item()
        logits1 = out.logits[:, 1:n].float()
        tgt1 = seq[:, 2 : n + 1]
        rep_loss_first = torch.nn.functional.cross_entropy(
            logits1.reshape(-1, logits1.size(-1)), tgt1.reshape(-1)
        ).item()
    finally:
        model.set_attn_implementation(prev_impl)

    def best(scores):
        flat = [(s, li, hi) for li, row in enumerate(scores) for hi, s in enumerate(row)]
        s, li, hi = max(flat)
        return {"layer": li, "head": hi, "score": round(s, 4)}

    return {
        "previous_token_score_per_layer_head": [[round(v, 4) for v in row] for row in prev],
        "induction_score_per_layer_head": [[round(v, 4) for v in row] for row in ind],
        "best_previous_token_head": best(prev),
        "best_induction_head": best(ind),
        "repeated_random_tokens_loss_first_copy": round(rep_loss_first, 4),
        "repeated_random_tokens_loss_second_copy": round(rep_loss_second, 4),
    }


# ------------------------------------------------------------------------- main


def force_eager_attention(config_path: Path) -> None:
    """Make ``from_pretrained`` default to eager attention.

    Attention Atlas needs ``output_attentions=True``, which SDPA silently does
    not support (it returns no attentions).  ``attn_implementation`` is read
    back from config.json by transformers but never written by
    ``save_pretrained``, so add it by hand.  Callers can still override it.
    """
    cfg = json.loads(config_path.read_text())
    cfg["attn_implementation"] = "eager"
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="training device; final evaluation always runs on CPU")
    ap.add_argument(
        "--repeat-frac",
        type=float,
        default=0.5,
        help="fraction of training windows with a repeated random-order pydoc token sequence (see sample_batch)",
    )
    ap.add_argument("--copy-min", type=int, default=8)
    ap.add_argument("--copy-max", type=int, default=24)
    ap.add_argument("--copy-reps", type=int, default=4)
    ap.add_argument(
        "--decay-frac",
        type=float,
        default=0.3,
        help="LR is constant after warmup, then cosine-decays to 10%% over this final fraction of steps",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(SEED)
    torch.use_deterministic_algorithms(True)

    from transformers import LlamaConfig, LlamaForCausalLM, GenerationConfig
    import transformers

    t0 = time.time()
    train_docs, val_docs = load_split()
    tokenizer = train_tokenizer(train_docs)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    vocab = len(tokenizer)

    train_ids = encode_stream(tokenizer, train_docs)
    val_ids = encode_stream(tokenizer, val_docs)
    val_blocks = make_blocks(val_ids)
    train_t = torch.tensor(train_ids, dtype=torch.long)
    token_pool = train_t[(train_t != eot_id) & (train_t != pad_id)]
    train_chars = sum(len(t) for _, t in train_docs)
    print(
        f"vocab={vocab} train_tokens={len(train_ids)} ({train_chars / len(train_ids):.2f} chars/token) "
        f"val_tokens={len(val_ids)} val_blocks={val_blocks.size(0)}",
        flush=True,
    )

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, args.steps // 20)

    decay_start = int(args.steps * (1 - args.decay_frac))

    def lr_at(step: int) -> float:  # warmup, constant, cosine to 10% at the end
        if step < warmup:
            return args.lr * (step + 1) / warmup
        if step < decay_start:
            return args.lr
        prog = (step - decay_start) / max(1, args.steps - decay_start)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))

    gen = torch.Generator().manual_seed(SEED)
    curve = []
    t_train = time.time()
    model.train()
    running = 0.0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = sample_batch(
            train_t, args.batch_size, args.repeat_frac, gen, (args.copy_min, args.copy_max), args.copy_reps
        ).to(args.device)
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += out.loss.item()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            vl = evaluate(model, val_blocks.to(args.device))
            dg = attention_diagnostics(model, val_blocks.to(args.device), token_pool)
            model.train()
            tl = running / ((step % args.eval_every) + 1)
            running = 0.0
            curve.append({
                "step": step + 1, "train_loss": round(tl, 4), "heldout_loss": round(vl, 4),
                "best_previous_token_score": dg["best_previous_token_head"]["score"],
                "best_induction_score": dg["best_induction_head"]["score"],
            })
            print(
                f"step {step + 1:5d} train_loss {tl:.4f} heldout_loss {vl:.4f} "
                f"ppl {math.exp(vl):.2f} prev {curve[-1]['best_previous_token_score']:.3f} "
                f"induction {curve[-1]['best_induction_score']:.3f} "
                f"copy_loss {dg['repeated_random_tokens_loss_first_copy']:.2f}->"
                f"{dg['repeated_random_tokens_loss_second_copy']:.2f} elapsed {time.time() - t_train:.0f}s",
                flush=True,
            )
    train_seconds = time.time() - t_train

    # Final metrics, computed on CPU exactly as the unit test recomputes them.
    model = model.cpu().eval()
    heldout_loss = evaluate(model, val_blocks)
    subset_loss = evaluate(model, val_blocks[:SUBSET_BLOCKS])
    train_eval_loss = evaluate(model, make_blocks(train_ids)[::10])
    diag = attention_diagnostics(model, val_blocks, token_pool)
    print(json.dumps({k: v for k, v in diag.items() if "per_layer" not in k}, indent=1), flush=True)

    # Sample (greedy) for the README.
    prompt = "The \"for\" statement"
    enc = tokenizer(prompt, return_tensors="pt")
    sample_ids = model.generate(**enc, max_new_tokens=60, do_sample=False, pad_token_id=pad_id)
    sample = tokenizer.decode(sample_ids[0], skip_special_tokens=True)

    out_dir: Path = args.out
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=pad_id, max_length=CONTEXT
    )
    model.save_pretrained(out_dir)  # safetensors by default
    tokenizer.save_pretrained(out_dir)
    force_eager_attention(out_dir / "config.json")

    report = {
        "model": "tiny-pydoc-lm",
        "architecture": "LlamaForCausalLM",
        "task": "causal language modelling",
        "dataset": {
            "name": "pydoc_data.topics (CPython help texts)",
            "python_version": platform.python_version(),
            "num_topics": len(train_docs) + len(val_docs),
            "train_chars": train_chars,
            "heldout_chars": sum(len(t) for _, t in val_docs),
            "train_tokens": len(train_ids),
            "heldout_tokens_scored": int(val_blocks.size(0) * (CONTEXT - 1)),
            "heldout_sha256": docs_sha256(val_docs),
        },
        "split": {
            "method": "sorted topic keys; index % 10 == 0 held out (tokenizer and model trained on the rest)",
            "train_topics": len(train_docs),
            "heldout_topics": [k for k, _ in val_docs],
        },
        "tokenizer": {
            "type": "byte-level BPE (tokenizers library)",
            "vocab_size": vocab,
            "special_tokens": {"bos_eos": EOT, "pad": PAD},
            "note": "post-processor prepends <|endoftext|> as BOS to every encoded text",
        },
        "config": {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "context_length": CONTEXT,
            "tie_word_embeddings": True,
        },
        "params": n_params,
        "training": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "context": CONTEXT,
            "tokens_seen": args.steps * args.batch_size * CONTEXT,
            "epochs": round(args.steps * args.batch_size * CONTEXT / len(train_ids), 2),
            "optimizer": (
                "AdamW(betas=(0.9,0.95), wd=0.1), 5% warmup, constant, "
                f"cosine to 10% over the last {args.decay_frac:.0%}, grad clip 1.0"
            ),
            "peak_lr": args.lr,
            "repeat_frac": args.repeat_frac,
            "repeat_note": (
                f"this fraction of training windows starts with s repeated 2-{args.copy_reps} times, then pydoc "
                f"text; s = {args.copy_min}-{args.copy_max} pydoc tokens drawn from random positions of the "
                "training stream"
            ),
            "seed": SEED,
            "threads": args.threads,
            "device": args.device,
            "curve": curve,
        },
        "metrics": {
            "heldout_loss": round(heldout_loss, 5),
            "heldout_perplexity": round(math.exp(heldout_loss), 3),
            "heldout_bits_per_char": round(
                heldout_loss * val_blocks.numel() * (CONTEXT - 1) / CONTEXT / math.log(2)
                / sum(len(t) for _, t in val_docs),
                4,
            ),
            "heldout_subset_blocks": SUBSET_BLOCKS,
            "heldout_subset_loss": round(subset_loss, 5),
            "train_loss_eval_mode": round(train_eval_loss, 5),
            "uniform_baseline_loss": round(math.log(vocab), 5),
            "loss_definition": (
                "mean next-token cross-entropy (nats) over non-overlapping 128-token blocks of the "
                "concatenated held-out token stream (remainder dropped; 127 predictions per block)"
            ),
        },
        "attention_diagnostics": diag,
        "greedy_sample": {"prompt": prompt, "output": sample},
        "seconds": {"train": round(train_seconds, 1), "total": round(time.time() - t0, 1)},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
    }
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(render_readme(report))
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"saved to {out_dir} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f}s", flush=True)


def render_readme(r: dict) -> str:
    m, c, d, t = r["metrics"], r["config"], r["dataset"], r["training"]
    diag = r["attention_diagnostics"]
    bp, bi = diag["best_previous_token_head"], diag["best_induction_head"]
    l1 = diag["repeated_random_tokens_loss_first_copy"]
    l2 = diag["repeated_random_tokens_loss_second_copy"]
    if bi["score"] >= 0.2 and l2 < l1 - 0.5:
        induction_verdict = (
            f"There is an induction-like head (layer {bi['layer']} head {bi['head']}, score {bi['score']:.2f}) "
            f"and the loss on the second copy drops ({l1:.2f} -> {l2:.2f}): the model copies in context."
        )
    else:
        induction_verdict = (
            f"**No real induction head formed** in this training budget: the best induction score is "
            f"{bi['score']:.2f} (layer {bi['layer']} head {bi['head']}; chance level is ~0.01-0.02) and the "
            f"loss on the second copy of a repeated sequence does not drop ({l1:.2f} -> {l2:.2f}). Do not "
            "present any head of this model as an induction head."
        )
    return f"""# tiny-pydoc-lm

A **tiny demo** causal language model for Attention Atlas. It exists so the app
has a small, offline, *actually trained* decoder whose attention heads show
real structure. It is not a useful language model.

* Architecture: `LlamaForCausalLM`, {c['num_hidden_layers']} layers, hidden {c['hidden_size']},
  {c['num_attention_heads']} query heads sharing {c['num_key_value_heads']} key/value heads (GQA),
  RoPE, SwiGLU MLP ({c['intermediate_size']}), tied embeddings, {r['params']:,} parameters (float32).
* Context: trained on {c['context_length']}-token windows; longer inputs run (RoPE) but are out of distribution.
* Tokenizer: byte-level BPE, vocab {r['tokenizer']['vocab_size']}, trained on the training split.
  `<|endoftext|>` is BOS/EOS (prepended automatically by the tokenizer), `<|pad|>` is padding.
* Data: the English help texts in CPython's `pydoc_data.topics`
  (Python {d['python_version']}, {d['num_topics']} topics, ~{(d['train_chars'] + d['heldout_chars']) // 1000} KB).
  Sorted topic keys with index % 10 == 0 are held out ({len(r['split']['heldout_topics'])} topics,
  {d['heldout_chars']:,} characters): {', '.join(r['split']['heldout_topics'])}.
  The help texts differ between Python versions, so the split and tokenizer depend on the
  Python that ran the script (recorded in `training_report.json`).
* Training: {t['steps']} steps x {t['batch_size']} x {t['context']} tokens (~{t['epochs']} epochs over
  {d['train_tokens']:,} training tokens), AdamW, peak LR {t['peak_lr']}, device `{t['device']}`,
  {r['seconds']['train']:.0f} s wall time on a shared machine. Seed {t['seed']}.
* Copy windows: {t['repeat_frac']:.0%} of training windows: {t['repeat_note'].removeprefix('this fraction of training windows ')}.
  Meant to push the model towards in-context copying. In our runs this made the
  previous-token heads sharper (best score ~0.4-0.6 on plain text only vs ~0.7-0.9 with copy
  windows) but did not produce an induction head within a CPU-sized budget (see below).
  Evaluation uses plain held-out text only.

## Results (held-out topics)

| metric | value |
|---|---|
| held-out loss (nats/token) | {m['heldout_loss']:.3f} |
| held-out perplexity | {m['heldout_perplexity']:.1f} |
| held-out bits per character | {m['heldout_bits_per_char']:.2f} |
| train loss (eval mode, plain text) | {m['train_loss_eval_mode']:.3f} |
| uniform baseline loss, ln({r['tokenizer']['vocab_size']}) | {m['uniform_baseline_loss']:.3f} |

Output text is locally plausible reStructuredText-ish Python doc prose and
grammar snippets, but not coherent. Greedy sample for
`{r['greedy_sample']['prompt']}`:

```
{r['greedy_sample']['output']}
```

## Attention structure

Measured with eager attention (`output_attentions=True`):

* strongest previous-token head: layer {bp['layer']} head {bp['head']}
  (mean attention to position i-1 on held-out text: {bp['score']:.2f});
* induction test: 8 sequences of 50 pydoc tokens in random order, each repeated twice;
  induction score = mean attention from the second copy to the token after the earlier
  occurrence. {induction_verdict}

Per-head scores for every layer are in `training_report.json`.

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("assets/models/tiny-pydoc-lm")
model = AutoModelForCausalLM.from_pretrained("assets/models/tiny-pydoc-lm")
out = model(**tok("The \\"if\\" statement", return_tensors="pt"), output_attentions=True)
```

`config.json` sets `attn_implementation: "eager"` so `output_attentions=True`
works without extra arguments (SDPA returns no attention maps).

Reproduce with `python scripts/train_demo_lm.py` (torch {r['versions']['torch']},
transformers {r['versions']['transformers']}, Python {r['versions']['python']}); small numeric
differences across library versions / CPUs are expected.
"""

if __name__ == "__main__":
    main()
