"""Hugging Face ``config.json`` ⇄ our ``ModelConfig``.

Import reads dimensions from the checkpoints' own configs (a preset is only checked against
them); export writes the configs transformers expects. Architectures we do not model (attention
biases, sliding windows, a non-SiLU MLP) are refused with the offending key rather than converted
into a model that silently computes something else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from megatron_infimed.config.presets import LanguageConfig, ModelConfig, VisionConfig


def read_config(folder: Path, what: str) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{what} folder {folder} has no config.json")
    return json.loads(path.read_text())


def _require(config: dict, key: str, expected, where: str) -> None:
    if config.get(key, expected) != expected:
        raise ValueError(f"{where}: '{key}' is {config[key]!r}; only {expected!r} is supported")


def language_from_qwen3(config: dict[str, Any], where: str = "language config.json") -> LanguageConfig:
    if config.get("model_type") != "qwen3":
        raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, expected 'qwen3'")
    _require(config, "attention_bias", False, where)
    _require(config, "hidden_act", "silu", where)
    _require(config, "use_sliding_window", False, where)
    # transformers 5 nests rope_theta in rope_parameters; older configs keep it at the top level.
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{where}: rope_type {rope['rope_type']!r} is not supported (only 'default')")
    heads = config["num_attention_heads"]
    return LanguageConfig(
        hidden_size=config["hidden_size"], ffn_hidden_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"], num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"], max_position_embeddings=config["max_position_embeddings"],
        rotary_base=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        norm_epsilon=config["rms_norm_eps"], tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def vision_from_siglip(config: dict[str, Any], where: str = "vision config.json") -> VisionConfig:
    if config.get("model_type") == "siglip":  # a full SigLIP (text + vision): take its vision half
        config = config["vision_config"]
    elif config.get("model_type") != "siglip_vision_model":
        raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, expected 'siglip' or "
                         f"'siglip_vision_model'")
    _require(config, "hidden_act", "gelu_pytorch_tanh", where)
    _require(config, "num_channels", 3, where)
    return VisionConfig(
        hidden_size=config["hidden_size"], ffn_hidden_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
        image_size=config["image_size"], patch_size=config["patch_size"],
        norm_epsilon=config.get("layer_norm_eps", 1e-6),
    )


def mismatches(found: Any, expected: Any, prefix: str = "") -> list[str]:
    """``["language.hidden_size: checkpoint 64, preset 128", ...]`` for differing dataclass fields."""
    out = []
    for field in dataclasses.fields(found):
        a, b = getattr(found, field.name), getattr(expected, field.name)
        if dataclasses.is_dataclass(a):
            out += mismatches(a, b, f"{prefix}{field.name}.")
        elif a != b:
            out.append(f"{prefix}{field.name}: checkpoint {a!r}, preset {b!r}")
    return out


def qwen3_config(lang: LanguageConfig, tokens: dict[str, int | None]) -> dict[str, Any]:
    """A ``Qwen3ForCausalLM`` config.json for ``lang``."""
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": lang.vocab_size, "hidden_size": lang.hidden_size, "intermediate_size": lang.ffn_hidden_size,
        "num_hidden_layers": lang.num_layers, "num_attention_heads": lang.num_attention_heads,
        "num_key_value_heads": lang.num_query_groups, "head_dim": lang.kv_channels, "hidden_act": "silu",
        "max_position_embeddings": lang.max_position_embeddings, "rms_norm_eps": lang.norm_epsilon,
        "rope_parameters": {"rope_type": "default", "rope_theta": lang.rotary_base},
        "rope_theta": lang.rotary_base, "attention_bias": False, "attention_dropout": 0.0,
        "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": lang.tie_word_embeddings,
        "use_cache": True, "bos_token_id": None, "eos_token_id": tokens.get("eos_token_id"),
        "pad_token_id": tokens.get("pad_token_id"),
    }


def siglip_vision_config(vis: VisionConfig) -> dict[str, Any]:
    return {
        "model_type": "siglip_vision_model", "hidden_size": vis.hidden_size,
        "intermediate_size": vis.ffn_hidden_size, "num_hidden_layers": vis.num_layers,
        "num_attention_heads": vis.num_attention_heads, "num_channels": 3, "image_size": vis.image_size,
        "patch_size": vis.patch_size, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": vis.norm_epsilon,
        "attention_dropout": 0.0, "vision_use_head": False,
    }


def infimed_config(config: ModelConfig, tokens: dict[str, int | None], image_tokens: int,
                   dtype: str) -> dict[str, Any]:
    """The full model's config.json, registered with transformers' Auto classes through ``auto_map``."""
    return {
        "architectures": ["InfiMedForConditionalGeneration"], "model_type": "infimed",
        "auto_map": {
            "AutoConfig": "configuration_infimed.InfiMedConfig",
            "AutoModel": "modeling_infimed.InfiMedModel",
            "AutoModelForCausalLM": "modeling_infimed.InfiMedForConditionalGeneration",
            "AutoModelForImageTextToText": "modeling_infimed.InfiMedForConditionalGeneration",
        },
        "text_config": qwen3_config(config.language, tokens),
        "vision_config": siglip_vision_config(config.vision),
        "reduction": dataclasses.asdict(config.reduction),
        "projector_hidden_size": config.projector_hidden_size or config.language.hidden_size,
        "image_token_id": config.image_token_id, "image_seq_length": image_tokens,
        "tie_word_embeddings": config.language.tie_word_embeddings,
        "eos_token_id": tokens.get("eos_token_id"), "pad_token_id": tokens.get("pad_token_id"),
        "dtype": dtype,
        # Our own config, so the folder can be traced back (and re-imported) without guessing.
        "infimed_model_config": config.to_dict(),
    }
