"""Model presets: the one table of dimensions for every model size.

Conversion reads dimensions from checkpoints and checks them against a preset (never the other
way round); the data pipeline, the model and the FLOPs formula all read these dataclasses.

| preset        | language                       | vision                          |
|---------------|--------------------------------|---------------------------------|
| tiny          | 2 layers, hidden 64, vocab 2048 | 2 layers, hidden 32, 64 px / 8  |
| infimed-1.7b  | Qwen3-1.7B                     | SigLIP-so400m/14 at 384 px      |
| infimed-4b    | Qwen3-4B                       | SigLIP-so400m/14 at 384 px      |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LanguageConfig:
    """A Qwen3-style decoder: GQA, RMSNorm, per-head QK-RMSNorm, SwiGLU, RoPE, no biases."""

    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    vocab_size: int
    max_position_embeddings: int = 40960
    rotary_base: float = 1_000_000.0
    norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = True


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A SigLIP-style ViT: patch embedding, learned positions, pre-LN blocks, post-LN, no head."""

    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    norm_epsilon: float = 1e-6
    # SigLIP normalises pixels with mean = std = 0.5 per channel.
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass(frozen=True, kw_only=True)
class ReductionConfig:
    """How the patch grid becomes image tokens: ``pool`` (adaptive average pooling to
    ``pooled_grid``²), ``pixel_shuffle`` (space-to-depth by ``shuffle_factor``, tokens ÷ factor²)
    or ``none``."""

    kind: str = "pool"
    pooled_grid: int = 12
    shuffle_factor: int = 2


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    language: LanguageConfig
    vision: VisionConfig
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    # Hidden size of the 2-layer GELU projector; 0 means the language hidden size.
    projector_hidden_size: int = 0
    # Id of the token that stands for one image embedding after <image> expansion; the
    # tokenizer defines it for real data and training copies it here.
    image_token_id: int = 0

    def with_overrides(self, overrides: Mapping[str, Any]) -> ModelConfig:
        """Dotted-key overrides, e.g. ``{"reduction.kind": "none", "language.num_layers": 4}``."""
        config = self
        for key, value in overrides.items():
            config = _replace_dotted(config, key.split("."), value, key)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        data = dict(data)
        _check_keys(cls, data, "model config")
        for key, sub in (("language", LanguageConfig), ("vision", VisionConfig), ("reduction", ReductionConfig)):
            if key in data and isinstance(data[key], Mapping):
                _check_keys(sub, data[key], f"model config '{key}'")
                values = dict(data[key])
                if "image_mean" in values:
                    values["image_mean"] = tuple(values["image_mean"])
                    values["image_std"] = tuple(values["image_std"])
                data[key] = sub(**values)
        return cls(**data)


def _check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")


def _replace_dotted(obj: Any, path: list[str], value: Any, full_key: str) -> Any:
    known = {f.name for f in fields(obj)}
    if path[0] not in known:
        raise ValueError(f"unknown model config key '{full_key}' (no field '{path[0]}' in "
                         f"{type(obj).__name__}; known: {sorted(known)})")
    if len(path) == 1:
        return replace(obj, **{path[0]: value})
    return replace(obj, **{path[0]: _replace_dotted(getattr(obj, path[0]), path[1:], value, full_key)})


SIGLIP_SO400M_384 = VisionConfig(
    hidden_size=1152, ffn_hidden_size=4304, num_layers=27, num_attention_heads=16,
    image_size=384, patch_size=14,
)

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny",
        language=LanguageConfig(
            hidden_size=64, ffn_hidden_size=128, num_layers=2, num_attention_heads=4,
            num_query_groups=2, kv_channels=16, vocab_size=2048, max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            hidden_size=32, ffn_hidden_size=64, num_layers=2, num_attention_heads=2,
            image_size=64, patch_size=8,
        ),
        reduction=ReductionConfig(kind="pool", pooled_grid=4),
        image_token_id=2047,
    ),
    "infimed-1.7b": ModelConfig(
        name="infimed-1.7b",
        language=LanguageConfig(
            hidden_size=2048, ffn_hidden_size=6144, num_layers=28, num_attention_heads=16,
            num_query_groups=8, kv_channels=128, vocab_size=151936,
        ),
        vision=SIGLIP_SO400M_384,
        # Qwen3's <|image_pad|>.
        image_token_id=151655,
    ),
    "infimed-4b": ModelConfig(
        name="infimed-4b",
        language=LanguageConfig(
            hidden_size=2560, ffn_hidden_size=9728, num_layers=36, num_attention_heads=32,
            num_query_groups=8, kv_channels=128, vocab_size=151936,
        ),
        vision=SIGLIP_SO400M_384,
        image_token_id=151655,
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; an unknown name is a ValueError that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; known presets: {sorted(PRESETS)}") from None
