"""The FLOPs formula: one function for the training log (TFLOP/s, MFU), the benchmarks and the dry run.

Forward FLOPs count each multiply-add as 2 FLOPs and ignore norms, softmax and element-wise work:

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

A training step costs each part of the model a multiple of its forward FLOPs. The parts run in
the order vision → projector → language; backward through a part computes its weight gradients
(≈ 1 forward) when it trains, and its input gradients (≈ 1 forward) when a part before it trains,
since that part's gradient has to pass through. So the first trainable part, going backwards from
a frozen one, decides:

| the part    | a part before it trains | passes | why                                         |
|-------------|-------------------------|--------|---------------------------------------------|
| trains      | either                  | 3      | forward, input gradients, weight gradients  |
| frozen      | yes                     | 2      | forward, input gradients only               |
| frozen      | no                      | 1      | forward only: autograd stops at it          |

e.g. LLaVA's projector pre-training (``--freeze-vision --freeze-language``): vision 1×, projector
3×, language 2×; counting every part at 3× would overstate that run's MFU about 1.6-fold for
infimed-1.7b (1,500-token samples with one image each). A trained part whose predecessors are
frozen skips its first layer's input gradient; like Megatron-LM's formula, this ignores that.

Useful work only (``pack_training_flops``, what the training log uses): MFU counts the FLOPs the
model needs for its samples (PaLM's definition, Megatron-LM's formula), so the padding segment that
fills a pack to the micro-batch's slots is left out, though the GPU computes it; ``fill_ratio``
reports its share. Alignment padding inside a sample's segment (context parallelism, FP8,
``--no-packing``) is left out of the per-token terms, but its query-key pairs stay in the attention
term: a pack does not record where inside its segment a sample ends.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import ModelSection
from megatron_infimed.data.pack import Pack
from megatron_infimed.model.token_reduction import reduced_channels, tokens_per_image

# The model's parts in forward order, named as --freeze-vision, --freeze-projector, --freeze-language.
PARTS = ("vision", "projector", "language")


def frozen_parts(model: ModelSection) -> frozenset[str]:
    """The parts ``model`` freezes, e.g. ``frozenset({"vision"})`` for ``--freeze-vision``."""
    return frozenset(part for part in PARTS if getattr(model, f"freeze_{part}"))


def passes_per_part(frozen: Collection[str] = ()) -> dict[str, int]:
    """Forward-pass equivalents each part costs per training step (the table above).

    ``passes_per_part({"vision", "language"})`` → ``{"vision": 1, "projector": 3, "language": 2}``.
    """
    unknown = set(frozen) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown model part(s) {sorted(unknown)} to freeze; expected some of {list(PARTS)}")
    passes, earlier_trains = {}, False
    for part in PARTS:
        trains = part not in frozen
        passes[part] = 3 if trains else 2 if earlier_trains else 1
        earlier_trains = earlier_trains or trains
    return passes


def decoder_forward_flops(config: ModelConfig, segment_lengths: Sequence[int], num_tokens: int | None = None) -> float:
    """Forward FLOPs of the language model over packed segments; ``num_tokens`` counts the per-token
    terms (projections, MLP, logits) when it differs from the segments' slots (their padding)."""
    lang = config.language
    h, d, f = lang.hidden_size, lang.kv_channels, lang.ffn_hidden_size
    nq, nkv = lang.num_attention_heads, lang.num_query_groups
    tokens = sum(segment_lengths) if num_tokens is None else num_tokens
    dense = 2 * h * (nq + 2 * nkv) * d + 2 * nq * d * h + 3 * 2 * h * f
    pairs = sum(length * (length + 1) / 2 for length in segment_lengths)
    attention = 2 * 2 * nq * d * pairs
    return lang.num_layers * (dense * tokens + attention) + 2 * h * lang.vocab_size * tokens


def vision_forward_flops(config: ModelConfig, num_images: int) -> float:
    """Forward FLOPs of the vision tower (patch embedding and layers) over ``num_images`` images."""
    vis = config.vision
    c, f, p = vis.hidden_size, vis.ffn_hidden_size, vis.num_patches
    per_patch = 2 * (3 * c * c + c * c) + 2 * 2 * c * f
    per_image = vis.num_layers * (per_patch * p + 2 * 2 * c * p * p) + 2 * p * 3 * vis.patch_size**2 * c
    return num_images * per_image


def projector_forward_flops(config: ModelConfig, num_images: int) -> float:
    """Forward FLOPs of the projector over the image tokens left after token reduction."""
    hidden = config.projector_hidden_size or config.language.hidden_size
    per_token = 2 * (reduced_channels(config) * hidden + hidden * config.language.hidden_size)
    return num_images * tokens_per_image(config) * per_token


def training_flops(config: ModelConfig, segment_lengths: Sequence[int], num_images: int,
                   frozen: Collection[str] = (), num_tokens: int | None = None) -> float:
    """Model FLOPs of forward + backward over one pack (segments as in ``cu_seqlens``), each part
    counted by ``passes_per_part(frozen)``."""
    passes = passes_per_part(frozen)
    return (passes["vision"] * vision_forward_flops(config, num_images)
            + passes["projector"] * projector_forward_flops(config, num_images)
            + passes["language"] * decoder_forward_flops(config, segment_lengths, num_tokens))


def pack_training_flops(config: ModelConfig, pack: Pack, frozen: Collection[str] = ()) -> float:
    """Useful training FLOPs of ``pack``: its samples' segments (``Pack.sample_lengths``) and real
    tokens, not its padding. E.g. ``cu_seqlens = [0, 300, 500, 512]`` with trained labels in the
    first two segments and ``num_padding = 12`` counts segments [300, 200], 500 tokens."""
    return training_flops(config, pack.sample_lengths, int(pack.images.shape[0]), frozen,
                          num_tokens=pack.num_real_tokens)


def flops_per_token(config: ModelConfig, seq_length: int = 4096) -> float:
    """Decoder training FLOPs per token for one text sequence of ``seq_length`` tokens."""
    return training_flops(config, [seq_length], 0) / seq_length
