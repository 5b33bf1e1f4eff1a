"""The TransformerConfig each part gets, per target (device × layer implementation): the GPU
choices are tested here as configuration, since no GPU or Transformer Engine is at hand."""

import json
import subprocess
import sys

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_infimed.config.presets import get_preset
from megatron_infimed.config.run import ModelSection, ParallelConfig
from megatron_infimed.model.transformer_configs import (
    Fp8,
    Target,
    language_kwargs,
    projector_kwargs,
    vision_fp8_reason,
    vision_kwargs,
)

FUSIONS = ("apply_rope_fusion", "bias_activation_fusion", "gradient_accumulation_fusion", "cross_entropy_loss_fusion")
BIG = get_preset("infimed-1.7b")
TINY = get_preset("tiny")


def fusion_flags(kwargs):
    return {name: kwargs[name] for name in FUSIONS}


def test_the_cpu_backend_runs_unfused():
    kwargs = language_kwargs(TINY, ParallelConfig(), torch.float32, Target("cpu", "local"))
    assert not any(fusion_flags(kwargs).values())


def test_cuda_with_transformer_engine_turns_every_fusion_on():
    kwargs = language_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "te"))
    assert all(fusion_flags(kwargs).values())
    assert kwargs["cross_entropy_fusion_impl"] == "te"


def test_cuda_with_local_layers_fuses_what_needs_no_te_and_builds():
    kwargs = language_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "local"))
    assert fusion_flags(kwargs) == {"apply_rope_fusion": False, "bias_activation_fusion": True,
                                    "gradient_accumulation_fusion": False, "cross_entropy_loss_fusion": True}
    assert kwargs["cross_entropy_fusion_impl"] == "native"
    for build in (language_kwargs, vision_kwargs, projector_kwargs):  # megatron-core accepts each
        TransformerConfig(**build(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "local")))


def test_the_fused_vit_gelu_is_the_tanh_gelu_siglip_uses_and_the_projector_stays_exact():
    fused = vision_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "local"))
    assert fused["activation_func"] is torch.nn.functional.gelu and fused["bias_activation_fusion"]
    unfused = vision_kwargs(BIG, ParallelConfig(), torch.float32, Target("cpu", "local"))
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(unfused["activation_func"](x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert not projector_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "te"))["bias_activation_fusion"]


def test_fp8_reaches_the_language_model():
    fp8 = Fp8.of(ModelSection(preset="infimed-1.7b", transformer_impl="te", bf16=True, fp8="hybrid",
                              fp8_recipe="tensorwise", fp8_amax_history_len=16))
    kwargs = language_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "te"), fp8)
    assert (kwargs["fp8"], kwargs["fp8_recipe"], kwargs["fp8_amax_history_len"]) == ("hybrid", "tensorwise", 16)


def test_the_siglip_tower_stays_bf16_under_fp8_and_says_why():
    fp8 = Fp8("hybrid")
    assert vision_fp8_reason(BIG, ParallelConfig(), fp8) == "729 rows per image is not a multiple of 16"
    assert vision_kwargs(BIG, ParallelConfig(), torch.bfloat16, Target("cuda", "te"), fp8)["fp8"] is None


def test_an_aligned_vision_tower_may_run_fp8():
    # The tiny tower: 8×8 = 64 patches per image, widths 64/192/256.
    assert vision_fp8_reason(TINY, ParallelConfig(), Fp8("hybrid")) is None
    assert vision_fp8_reason(TINY, ParallelConfig(), Fp8("hybrid", "mxfp8")) is None
    assert "not a multiple of 32" in vision_fp8_reason(BIG, ParallelConfig(), Fp8("hybrid", "mxfp8"))


def test_te_without_bf16_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="--transformer-impl te needs --bf16"):
        ModelSection(transformer_impl="te")


@pytest.mark.slow
def test_the_gpu_dry_run_shows_fp8_the_fusions_and_the_pad_multiple():
    result = subprocess.run([sys.executable, "-m", "megatron_infimed.cli.train", "--preset", "infimed-1.7b",
                             "--dry-run", "--device", "cuda", "--transformer-impl", "te", "--fp8", "hybrid", "--bf16"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    effective = json.loads(result.stdout)["effective"]
    assert effective["language"]["fp8"] == "hybrid"
    assert effective["vision"]["fp8"] is None and "729 rows" in effective["vision"]["fp8_kept_bf16_because"]
    assert all(effective["language"][name] for name in FUSIONS)
    assert effective["pad_multiple"] >= 16


def test_a_bf16_model_built_for_benchmarks_runs_its_vision_tower(mcore_world):
    # The bare bf16 build left CLIPViTModel.conv1 and the norms in fp32: conv2d raised a dtype mismatch.
    from megatron_infimed.bench.workload import build_model

    model = build_model(TINY, seed=0, dtype=torch.bfloat16)
    images = torch.rand(2, 3, TINY.vision.image_size, TINY.vision.image_size)
    with torch.no_grad():
        embeddings = model.module.vision_model(images.to(torch.bfloat16))
    assert embeddings.dtype == torch.bfloat16
    assert embeddings.shape[0] == 2 and torch.isfinite(embeddings).all()


SPLIT = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, context_parallel_size=2)


@pytest.mark.parametrize("target", [Target("cpu", "local"), Target("cuda", "local"), Target("cuda", "te")])
def test_sequence_and_context_parallelism_reach_the_decoder_and_megatron_accepts_them(target):
    kwargs = language_kwargs(BIG, SPLIT, torch.bfloat16, target)
    assert (kwargs["sequence_parallel"], kwargs["context_parallel_size"]) == (True, 2)
    if target.impl == "local":  # TE's fused RoPE cannot be configured without TE installed
        TransformerConfig(**kwargs)


@pytest.mark.parametrize("build", [vision_kwargs, projector_kwargs])
def test_the_vision_tower_and_projector_see_whole_images_never_a_split_sequence(build):
    for target in (Target("cuda", "te"), Target("cuda", "local")):
        kwargs = build(BIG, SPLIT, torch.bfloat16, target)
        assert (kwargs["sequence_parallel"], kwargs["context_parallel_size"],
                kwargs["tensor_model_parallel_size"]) == (False, 1, 2)
    TransformerConfig(**kwargs)


def test_local_decoder_norms_are_marked_for_the_sequence_parallel_gradient_all_reduce():
    from megatron_infimed.model.specs import TorchNorm, language_block_spec

    config = TransformerConfig(**language_kwargs(TINY, SPLIT, torch.float32, Target("cpu", "local")))
    block = language_block_spec("local", config).submodules
    assert block.layer_norm is TorchNorm and len(block.layer_specs) == TINY.language.num_layers
    layer = block.layer_specs[0].submodules
    assert layer.input_layernorm is layer.pre_mlp_layernorm is TorchNorm
    norm = TorchNorm(config, 8, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm) and norm.weight.sequence_parallel
    plain = TransformerConfig(**language_kwargs(TINY, ParallelConfig(), torch.float32, Target("cpu", "local")))
    assert not TorchNorm(plain, 8).weight.sequence_parallel
