"""Preset dimensions: our megatron-core model has exactly the parameters of the published
architectures (transformers' Qwen3ForCausalLM and SigLIP vision model without its head)."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from megatron_infimed.config.presets import PRESETS, get_preset
from megatron_infimed.config.run import BatchSection, ModelSection, RunConfig
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.training.dry_run import count, dry_run_report


def hf_language(preset: str) -> torch.nn.Module:
    lang = get_preset(preset).language
    config = Qwen3Config(
        vocab_size=lang.vocab_size, hidden_size=lang.hidden_size, intermediate_size=lang.ffn_hidden_size,
        num_hidden_layers=lang.num_layers, num_attention_heads=lang.num_attention_heads,
        num_key_value_heads=lang.num_query_groups, head_dim=lang.kv_channels,
        tie_word_embeddings=lang.tie_word_embeddings,
    )
    with torch.device("meta"):
        return Qwen3ForCausalLM(config)


def hf_vision(preset: str) -> torch.nn.Module:
    vis = get_preset(preset).vision
    config = SiglipVisionConfig(
        hidden_size=vis.hidden_size, intermediate_size=vis.ffn_hidden_size, num_hidden_layers=vis.num_layers,
        num_attention_heads=vis.num_attention_heads, image_size=vis.image_size, patch_size=vis.patch_size,
        vision_use_head=False,
    )
    with torch.device("meta"):
        return SiglipVisionModel(config)


def unique_count(model: torch.nn.Module) -> int:
    # Tied weights are one tensor: count each storage once.
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_language_parameters_equal_qwen3(mcore_world, preset):
    with torch.device("meta"):
        ours = InfiMedModel(get_preset(preset))
    assert count(ours.language_model) == unique_count(hf_language(preset))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_vision_parameters_equal_siglip_without_head(mcore_world, preset):
    with torch.device("meta"):
        ours = InfiMedModel(get_preset(preset))
    assert count(ours.vision_model) == unique_count(hf_vision(preset))


def test_qwen3_presets_have_the_published_language_sizes(mcore_world):
    assert dry_run_report(RunConfig(model=ModelSection(preset="infimed-1.7b")))["params"]["language"] == 1_720_574_976
    assert dry_run_report(RunConfig(model=ModelSection(preset="infimed-4b")))["params"]["language"] == 4_022_468_096


def test_dry_run_report_lists_parts_tokens_and_flops(mcore_world):
    report = dry_run_report(RunConfig(model=ModelSection(preset="infimed-1.7b"), batch=BatchSection(seq_length=4096)))
    params = report["params"]
    assert params["total"] == params["vision"] + params["projector"] + params["language"]
    # 2-layer GELU projector: 1152 → 2048 → 2048, with biases.
    assert params["projector"] == 1152 * 2048 + 2048 + 2048 * 2048 + 2048
    assert report["image_tokens_per_image"] == 144
    assert report["flops_per_token"] > 6 * params["language"]


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'infimed-7b'.*infimed-1\.7b"):
        get_preset("infimed-7b")


def test_unknown_model_override_key_is_named():
    with pytest.raises(ValueError, match=r"language\.num_heads"):
        get_preset("tiny").with_overrides({"language.num_heads": 8})
