"""The FLOPs formula: one function for the training log (TFLOP/s, MFU) and the benchmarks.

Model FLOPs of one training step = 3 × forward FLOPs (backward ≈ 2 × forward), counting each
multiply-add as 2 FLOPs and ignoring norms, softmax and element-wise work:

decoder, per token and layer:
    2·h·(n_q + 2·n_kv)·d          QKV projection
    2·n_q·d·h                     output projection
    3 · 2·h·f                     SwiGLU (gate, up, down)
decoder, per packed segment of length l and layer (causal, so l(l+1)/2 query-key pairs):
    2 · 2·n_q·d · l(l+1)/2        scores Q·Kᵀ and the weighted sum of V
logits: 2·h·V per token
vision, per image of P patches and layer (bidirectional):
    2·(3·c·c + c·c) + 2·2·c·f_v per patch, and 2·2·c·P² for attention; patch embedding 2·P·3p²·c
projector, per image token: 2·(c_in·c_p + c_p·h)

Frozen parts are counted like trained ones: MFU measures the model's arithmetic, as Megatron-LM's
formula does, not only what produces gradients.
"""

from __future__ import annotations

from typing import Sequence

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.model.token_reduction import reduced_channels, tokens_per_image


def decoder_forward_flops(config: ModelConfig, segment_lengths: Sequence[int]) -> float:
    lang = config.language
    h, d, f = lang.hidden_size, lang.kv_channels, lang.ffn_hidden_size
    nq, nkv = lang.num_attention_heads, lang.num_query_groups
    tokens = sum(segment_lengths)
    dense = 2 * h * (nq + 2 * nkv) * d + 2 * nq * d * h + 3 * 2 * h * f
    pairs = sum(length * (length + 1) / 2 for length in segment_lengths)
    attention = 2 * 2 * nq * d * pairs
    return lang.num_layers * (dense * tokens + attention) + 2 * h * lang.vocab_size * tokens


def vision_forward_flops(config: ModelConfig, num_images: int) -> float:
    vis = config.vision
    c, f, p = vis.hidden_size, vis.ffn_hidden_size, vis.num_patches
    per_patch = 2 * (3 * c * c + c * c) + 2 * 2 * c * f
    per_image = vis.num_layers * (per_patch * p + 2 * 2 * c * p * p) + 2 * p * 3 * vis.patch_size**2 * c
    projector_hidden = config.projector_hidden_size or config.language.hidden_size
    projector = tokens_per_image(config) * 2 * (
        reduced_channels(config) * projector_hidden + projector_hidden * config.language.hidden_size)
    return num_images * (per_image + projector)


def training_flops(config: ModelConfig, segment_lengths: Sequence[int], num_images: int) -> float:
    """Model FLOPs of forward + backward over one pack (segments as in ``cu_seqlens``)."""
    return 3.0 * (decoder_forward_flops(config, segment_lengths) + vision_forward_flops(config, num_images))


def flops_per_token(config: ModelConfig, seq_length: int = 4096) -> float:
    """Decoder training FLOPs per token for one text sequence of ``seq_length`` tokens."""
    return training_flops(config, [seq_length], 0) / seq_length
