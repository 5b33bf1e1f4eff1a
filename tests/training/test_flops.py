"""The FLOPs formula: a hand computation for the tiny preset, frozen parts at their real cost, and
padding left out of the useful work that MFU counts."""

from types import SimpleNamespace

import pytest

from megatron_infimed.config.presets import get_preset
from megatron_infimed.config.run import ModelSection, RunConfig
from megatron_infimed.data.pack import Pack
from megatron_infimed.training.flops import (
    decoder_forward_flops,
    frozen_parts,
    pack_training_flops,
    passes_per_part,
    projector_forward_flops,
    training_flops,
    vision_forward_flops,
)
from megatron_infimed.training.mock_data import mock_pack

TINY = get_preset("tiny")  # hidden 64, ffn 128, 2 layers, 4 heads, 2 groups, head dim 16, vocab 2048


def test_decoder_flops_by_hand():
    lengths = [3, 5]
    qkv = 2 * 64 * (4 + 2 * 2) * 16
    out = 2 * 4 * 16 * 64
    mlp = 3 * 2 * 64 * 128
    pairs = 3 * 4 / 2 + 5 * 6 / 2
    attention = 2 * 2 * 4 * 16 * pairs
    logits = 2 * 64 * 2048 * 8
    assert decoder_forward_flops(TINY, lengths) == 2 * ((qkv + out + mlp) * 8 + attention) + logits


def test_packing_costs_less_attention_than_one_long_sequence():
    assert decoder_forward_flops(TINY, [100, 100]) < decoder_forward_flops(TINY, [200])


def test_fewer_image_tokens_cost_less_projector_work():
    full = TINY.with_overrides({"reduction.kind": "none"})
    assert projector_forward_flops(TINY, 1) < projector_forward_flops(full, 1)
    assert vision_forward_flops(TINY, 1) == vision_forward_flops(full, 1)


@pytest.mark.parametrize("frozen, passes", [
    ((), {"vision": 3, "projector": 3, "language": 3}),
    # Nothing before the vision tower: frozen, it only runs forward.
    (("vision",), {"vision": 1, "projector": 3, "language": 3}),
    # LLaVA's projector pre-training: gradients still flow back through the frozen language model.
    (("vision", "language"), {"vision": 1, "projector": 3, "language": 2}),
    (("projector",), {"vision": 3, "projector": 2, "language": 3}),
    (("vision", "projector"), {"vision": 1, "projector": 1, "language": 3}),
    (("language",), {"vision": 3, "projector": 3, "language": 2}),
])
def test_a_frozen_part_costs_one_pass_plus_one_if_anything_before_it_trains(frozen, passes):
    assert passes_per_part(frozen) == passes


def test_training_flops_weigh_each_part_by_its_passes():
    vision, projector, language = vision_forward_flops(TINY, 2), projector_forward_flops(TINY, 2), \
        decoder_forward_flops(TINY, [10])
    assert training_flops(TINY, [10], 2) == 3 * (vision + projector + language)
    assert training_flops(TINY, [10], 2, frozen={"vision", "language"}) == vision + 3 * projector + 2 * language


def test_frozen_parts_are_read_from_the_run_configuration():
    assert frozen_parts(ModelSection(freeze_vision=True, freeze_language=True)) == {"vision", "language"}
    assert frozen_parts(ModelSection()) == frozenset()


def test_an_unknown_part_is_named():
    with pytest.raises(ValueError, match=r"\['decoder'\]"):
        passes_per_part({"decoder"})


def test_padding_a_pack_to_the_micro_batch_adds_no_useful_flops():
    pack = mock_pack(TINY, 200, seed=0, index=0)
    padded = pack.padded_to(256, pad_id=0)
    assert padded.num_padding == 256 - pack.num_tokens > 0
    lengths = (pack.cu_seqlens[1:] - pack.cu_seqlens[:-1]).tolist()
    assert pack_training_flops(TINY, padded) == pack_training_flops(TINY, pack) \
        == training_flops(TINY, lengths, pack.images.shape[0])


def test_each_padding_segment_of_a_concatenated_micro_batch_is_left_out():
    packs = [mock_pack(TINY, 200, seed=0, index=i) for i in range(2)]
    micro_batch = Pack.concat([p.padded_to(256, pad_id=0) for p in packs])  # [samples, pad, samples, pad]
    assert pack_training_flops(TINY, micro_batch, {"vision"}) == sum(pack_training_flops(TINY, p, {"vision"})
                                                                     for p in packs)


def test_the_step_record_reports_useful_tflops_and_mfu_against_the_peak(mcore_world):
    from megatron_infimed.training.metrics import step_record

    pack = mock_pack(TINY, 200, seed=0, index=0).padded_to(256, pad_id=0)
    config = RunConfig(model=ModelSection(freeze_vision=True))
    run = SimpleNamespace(config=config, model_config=TINY, iteration=1, consumed_samples=1,
                          feed=SimpleNamespace(stats=lambda: {"skipped": 0}))
    result = SimpleNamespace(packs=[pack], loss_sum=2.0, weight_sum=1.0, grad_norm=1.0, lr=1e-4, seconds=0.5,
                             data_wait_seconds=0.0)
    record = step_record(run, result, peak=0.004)
    tflops = pack_training_flops(TINY, pack, {"vision"}) / 0.5 / 1e12
    assert record["tflops_per_gpu"] == pytest.approx(tflops)
    assert record["mfu"] == pytest.approx(tflops / 0.004)
    assert step_record(run, result, peak=None)["mfu"] is None


@pytest.mark.parametrize("device_name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0),  # the SXM part names no variant
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA H20", None),  # a word, not a prefix: not read as an H200
    ("NVIDIA L40S", None),
])
def test_the_peak_is_nvidias_dense_bf16_figure_for_the_device_name(device_name, peak):
    from megatron_infimed.training.metrics import device_peak_tflops

    assert device_peak_tflops(device_name) == peak


def test_peak_tflops_from_the_configuration_wins_over_the_device_table():
    from megatron_infimed.config.flags import load_config
    from megatron_infimed.training.metrics import peak_tflops

    config, _ = load_config(["--mock-data", "--peak-tflops", "500"])
    assert peak_tflops(config.logging.peak_tflops) == 500.0
    with pytest.raises(ValueError, match="--peak-tflops is 0.0; it must be a positive number"):
        load_config(["--mock-data", "--peak-tflops", "0"])
