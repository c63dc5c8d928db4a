"""Tiny randomly initialised models built from configs, one per architecture the engine must cover."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def build(arch: str, attn_implementation: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A tiny model of ``arch`` with the given attention implementation, in eval mode."""
    torch.manual_seed(seed)
    if arch == "bert":
        cfg, cls = BertConfig(**COMMON, max_position_embeddings=64), BertForMaskedLM
    elif arch == "roberta":
        cfg, cls = RobertaConfig(**COMMON, max_position_embeddings=70, pad_token_id=1), RobertaForMaskedLM
    elif arch == "gpt2":
        cfg, cls = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64), GPT2LMHeadModel
    elif arch == "llama":
        cfg = LlamaConfig(**COMMON, num_key_value_heads=2, max_position_embeddings=64)
        cls = LlamaForCausalLM
    elif arch == "mistral":
        cfg = MistralConfig(**COMMON, num_key_value_heads=2, max_position_embeddings=64, sliding_window=5)
        cls = MistralForCausalLM
    elif arch == "qwen2":
        cfg, cls = Qwen2Config(**COMMON, num_key_value_heads=1, max_position_embeddings=64), Qwen2ForCausalLM
    elif arch == "vit":
        cfg = ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=16, patch_size=4, num_labels=3,
        )
        cls = ViTForImageClassification
    else:
        raise ValueError(arch)
    cfg._attn_implementation = attn_implementation
    model = cls(cfg).to(dtype).eval()
    return model


TEXT_ARCHS = ("bert", "roberta", "gpt2", "llama", "mistral", "qwen2")
ALL_ARCHS = TEXT_ARCHS + ("vit",)


def sample_inputs(arch: str, seed: int = 0) -> dict:
    """A padded batch of two sequences (lengths 9 and 6), or two images for ViT."""
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 1 if arch == "roberta" else 0
    return {"input_ids": ids, "attention_mask": mask}
