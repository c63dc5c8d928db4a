"""A 2-layer GPT-2 whose heads have known roles, built by setting its weights by hand, plus its tokenizer.

Residual stream (``n_embd = 512``); every block is written as ``+v`` in one dimension and ``-v`` in a mirror
dimension, so the residual has mean 0 and a norm that does not depend on the token or position: GPT-2's
LayerNorm (weight 1, bias 0) is then a fixed scale ``c`` and attention logits are exact bilinear forms.

    TOK   [0, 32) / [32, 64)      one-hot token            (wte; also read by the tied unembedding)
    POS   [64, 112) / [112, 160)  one-hot position         (wpe)
    PREV  [160, 192) / [192, 224) one-hot previous token   (written by layer 0 head 0)

Layer 0 (``G`` sets the logit margin, about 30 nats):
    head 0  previous token   q = pos(t), k = pos(s + 1)          -> attends t - 1; writes tok(t - 1) to PREV
    head 1  duplicate token  q = [tok(t), pos(t)], k = [tok(s), -2 pos(s)]: same token, not itself
    head 2  first-token sink q = constant (bias), k = [token is <bos>]
    head 3  positional +2    q = pos(t), k = pos(s + 2)          -> attends t - 2
Layer 1:
    head 0  induction        q = tok(t), k = prev(s): the position after an earlier copy of the current token;
                             writes 2 x tok(s) into TOK, so the unembedding predicts the token that followed
                             the earlier copy (a copying model: it reproduces a needle given its first tokens)
    heads 1-3                all-zero q/k/v: uniform causal attention, no output
MLPs write nothing (zero weights and biases; GELU(0) = 0).
"""

from __future__ import annotations

import math

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

V, P, D, H = 32, 48, 512, 4
HD = D // H
TOK, POS, PREV = 0, 2 * V, 2 * V + 2 * P
BOS, PAD = 0, 1
G = math.sqrt(30.0 * math.sqrt(HD))  # q . k = G^2 -> logit G^2 / sqrt(head_dim) = 30


def tokenizer() -> PreTrainedTokenizerFast:
    """Words ``t2 .. t31`` (ids 2..31); ``<bos>`` (0) is prepended to every text, ``<pad>`` is 1."""
    vocab = {"<bos>": BOS, "<pad>": PAD, **{f"t{i}": i for i in range(2, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<pad>")
    fast.padding_side = "right"
    return fast


def _pm(W: torch.Tensor, row: int, col: int, value: float, mirror: int) -> None:
    W[row, col] = value
    W[row, mirror] = -value


def build(attn_implementation: str) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=H, n_positions=P, bos_token_id=BOS,
                     eos_token_id=BOS, pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = attn_implementation
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        tr = model.transformer
        for block in (*tr.h, tr):
            for ln in ([block.ln_1, block.ln_2] if block is not tr else [tr.ln_f]):
                ln.weight.fill_(1.0)
        for v in range(V):
            _pm(tr.wte.weight, v, TOK + v, 1.0, TOK + V + v)
        for t in range(P):
            _pm(tr.wpe.weight, t, POS + t, 1.0, POS + P + t)
        c0 = 1 / math.sqrt(4 / D + cfg.layer_norm_epsilon)  # LN scale in layer 0: |x|^2 = 4
        c1 = 1 / math.sqrt(6 / D + cfg.layer_norm_epsilon)  # layer 1: + PREV (+-1)
        Wa, ba = tr.h[0].attn.c_attn.weight, tr.h[0].attn.c_attn.bias  # [D, 3D]: q | k | v
        q, k, v = 0, D, 2 * D
        g = G / c0
        for t in range(P):  # head 0: previous token; head 3: two back
            Wa[POS + t, q + 0 * HD + t] = g
            Wa[POS + t, q + 3 * HD + t] = g
            if t + 1 < HD:
                Wa[POS + t, k + 0 * HD + t + 1] = g
            if t + 2 < HD:
                Wa[POS + t, k + 3 * HD + t + 2] = g
        for j in range(V):  # head 0 copies the attended token into its value; c_proj writes it to PREV
            Wa[TOK + j, v + 0 * HD + j] = 1 / c0
            _pm(tr.h[0].attn.c_proj.weight, 0 * HD + j, PREV + j, 1.0, PREV + V + j)
        for j in range(V):  # head 1: duplicate token, self excluded
            Wa[TOK + j, q + 1 * HD + j] = g
            Wa[TOK + j, k + 1 * HD + j] = g
        for t in range(P):
            Wa[POS + t, q + 1 * HD + V + t] = g
            Wa[POS + t, k + 1 * HD + V + t] = -2 * g
        ba[q + 2 * HD] = G  # head 2: every query looks for <bos>
        Wa[TOK + BOS, k + 2 * HD] = g
        Wb = tr.h[1].attn.c_attn.weight
        g1 = G / c1
        for j in range(V):  # layer 1 head 0: induction; writes 2 x the attended token into TOK
            Wb[TOK + j, q + j] = g1
            Wb[PREV + j, k + j] = g1
            Wb[TOK + j, v + j] = 1 / c1
            _pm(tr.h[1].attn.c_proj.weight, j, TOK + j, 2.0, TOK + V + j)
    return model
