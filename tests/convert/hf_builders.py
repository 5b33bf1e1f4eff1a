"""Tiny random Hugging Face checkpoints shaped like the ``tiny`` preset (built from configs, no downloads).

Norm weights and biases are random too, so a swapped or missing norm/bias in the mapping changes
the outputs instead of hiding behind an all-ones/all-zeros initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatron_infimed.data.tokenizer import SPECIAL_TOKENS

CORPUS = ["the chest x-ray shows no acute findings", "is there a fracture in the left femur?",
          "yes", "no", "the liver appears enlarged with a small lesion", "axial ct of the abdomen"] * 20


def qwen3_config(tie: bool = True, **overrides):
    from transformers import Qwen3Config

    values = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, rms_norm_eps=1e-6,
                  rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=tie)
    return Qwen3Config(**{**values, **overrides})


def siglip_config(**overrides):
    from transformers import SiglipVisionConfig

    values = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                  patch_size=8, layer_norm_eps=1e-6, vision_use_head=True)
    return SiglipVisionConfig(**{**values, **overrides})


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        param.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.05 * noise)
    return model


def write_tokenizer(folder: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def write_qwen3(folder: Path, tie: bool = True, seed: int = 1, max_shard_size: str = "100KB"):
    from transformers import Qwen3ForCausalLM

    model = randomise(Qwen3ForCausalLM(qwen3_config(tie)), seed).eval()
    if tie:
        model.tie_weights()
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    write_tokenizer(folder)
    return model


def write_siglip(folder: Path, seed: int = 2):
    from transformers import SiglipVisionModel

    model = randomise(SiglipVisionModel(siglip_config()), seed).eval()
    model.save_pretrained(folder)
    return model
