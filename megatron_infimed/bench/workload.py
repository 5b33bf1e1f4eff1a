"""Small models and synthetic samples shaped by the length mix, shared by the model benchmarks.

The samples carry random token ids (speed does not depend on the text) but the real structure:
``images × tokens_per_image`` image positions first, then text whose labels are shifted per
sample, so the loss, the packing and the image scatter do what training does. One model config
serves every CPU benchmark; the vision tower is reduced for the CPU (SigLIP's 27×27 patch grid
kept, at patch 4 on 108 px and width 64) so 729 → 144 tokens per image still means what it does
in the 1.7B preset.
"""

from __future__ import annotations

import torch

from megatron_infimed.bench.length_mix import draw_samples
from megatron_infimed.config.presets import LanguageConfig, ModelConfig, ReductionConfig, VisionConfig
from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.preprocess import Sample
from megatron_infimed.model.token_reduction import tokens_per_image


def small_model_config(hidden: int = 256, layers: int = 2, vocab: int = 2048, reduce_images: bool = True,
                       max_positions: int = 16384) -> ModelConfig:
    """A Qwen3-shaped decoder (GQA, QK-norm, SwiGLU) and a 27×27-patch vision tower, CPU sized."""
    heads = max(2, hidden // 64)
    return ModelConfig(
        name=f"bench-h{hidden}-l{layers}",
        language=LanguageConfig(hidden_size=hidden, ffn_hidden_size=3 * hidden, num_layers=layers,
                                num_attention_heads=heads, num_query_groups=max(1, heads // 2), kv_channels=64,
                                vocab_size=vocab, max_position_embeddings=max_positions),
        vision=VisionConfig(hidden_size=64, ffn_hidden_size=128, num_layers=1, num_attention_heads=2,
                            image_size=108, patch_size=4),
        reduction=ReductionConfig(kind="pool", pooled_grid=12) if reduce_images else ReductionConfig(kind="none"),
        image_token_id=vocab - 1,
    )


def make_samples(config: ModelConfig, n: int, seq_length: int, seed: int) -> list[Sample]:
    """``n`` samples drawn from the mix (image count and text length), fitted to ``seq_length``."""
    per_image = tokens_per_image(config)
    size = config.vision.image_size
    g = torch.Generator().manual_seed(seed)
    text_vocab = config.image_token_id - 1
    samples = []
    for i, mix in enumerate(draw_samples(n, seq_length, per_image, seed)):
        text = torch.randint(0, text_vocab, (mix.text_tokens,), generator=g)
        ids = torch.cat([torch.full((mix.images * per_image,), config.image_token_id), text])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-mix.text_tokens:-1] = text[1:]
        pixels = torch.randint(0, 256, (mix.images, 3, size, size), generator=g, dtype=torch.uint8)
        samples.append(Sample(f"bench-{seed}-{i}", "bench", ids, labels, pixels))
    return samples


def ensure_world(seed: int = 1234) -> None:
    """A single-process megatron-core world (CPU backend without a GPU)."""
    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.runtime import distributed

    if not torch.distributed.is_initialized():
        distributed.initialize(ParallelConfig(), seed=seed)


def build_model(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The model as training builds it: bf16 through training's Float16Module wrapper, never a
    bare ``dtype`` (a bare bf16 model left the ViT's conv and norms in fp32 and crashed)."""
    from megatron_infimed.model.infimed import InfiMedModel
    from megatron_infimed.model.init import initialize_weights
    from megatron_infimed.training.setup import with_precision

    ensure_world()
    model = InfiMedModel(config, dtype=dtype)
    initialize_weights(model, seed)
    model = with_precision(model, dtype == torch.bfloat16)
    return model.cuda() if torch.cuda.is_available() else model
