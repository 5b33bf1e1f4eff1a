"""Stage boundaries: a stage starts from the previous stage's weights under another TP/PP
layout, frozen parts stay bitwise unchanged, and the loss is the global per-token mean."""

import pytest
import torch
from trainrun import read_metrics, torchrun

from megatron_infimed.checkpoint.layout import latest_iteration
from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.infimed import InfiMedModel, packed_seq_params
from megatron_infimed.model.init import initialize_weights
from megatron_infimed.training.mock_data import mock_pack

pytestmark = pytest.mark.slow
MOCK = ["--preset", "tiny", "--mock-data", "--seed", "21", "--log-interval", "1", "--seq-length", "160",
        "--global-batch-size", "4", "--lr", "3e-3"]


def checkpoint_tensors(root):
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_plain_tensors(str(root / f"iter_{latest_iteration(root):07d}"))


def test_next_stage_changes_layout_and_starts_from_previous_weights(tmp_path):
    torchrun(2, *MOCK, "--train-iters", "2", "--tensor-model-parallel-size", "2", "--save", str(tmp_path / "a"),
             "--run-dir", str(tmp_path / "run-a"))
    stage = [*MOCK, "--train-iters", "2", "--pretrained-checkpoint", str(tmp_path / "a")]
    torchrun(1, *stage, "--run-dir", str(tmp_path / "run-tp1"))
    torchrun(2, *stage, "--pipeline-model-parallel-size", "2", "--run-dir", str(tmp_path / "run-pp2"))
    first, tp1, pp2 = (read_metrics(tmp_path / name) for name in ("run-a", "run-tp1", "run-pp2"))
    # A new stage reads the same first batch again, now with trained weights.
    assert tp1[0]["loss"] < first[0]["loss"]
    for a, b in zip(tp1, pp2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)


def test_frozen_parts_stay_bitwise_unchanged_and_have_no_optimizer_state(tmp_path, mcore_world):
    torchrun(1, *MOCK, "--train-iters", "1", "--save", str(tmp_path / "a"), "--run-dir", str(tmp_path / "r1"))
    torchrun(1, *MOCK, "--train-iters", "2", "--pretrained-checkpoint", str(tmp_path / "a"), "--freeze-vision",
             "--freeze-language", "--save", str(tmp_path / "b"), "--run-dir", str(tmp_path / "r2"))
    before, after = checkpoint_tensors(tmp_path / "a"), checkpoint_tensors(tmp_path / "b")
    model_keys = [k for k in before if k.startswith(("vision_model.", "language_model.", "projector."))]
    assert model_keys
    for key in model_keys:
        if key.startswith("projector."):
            assert not torch.equal(before[key], after[key]), f"{key} should have trained"
        else:
            assert torch.equal(before[key], after[key]), f"{key} changed although frozen"
    state_keys = [k for k in after if k.startswith("optimizer.state.")]
    assert state_keys and all(".projector." in k for k in state_keys), state_keys


def test_loss_is_the_per_token_mean_over_micro_batches_and_data_parallel_ranks(tmp_path, mcore_world):
    # 4 packs per step: 2 data-parallel ranks × 2 micro-batches each.
    torchrun(2, *MOCK, "--train-iters", "1", "--run-dir", str(tmp_path / "run"))
    logged = read_metrics(tmp_path / "run")[0]["loss"]
    config = get_preset("tiny")
    model = InfiMedModel(config)
    initialize_weights(model, seed=21)
    total, weights = 0.0, 0.0
    with torch.no_grad():
        for k in range(4):
            pack = mock_pack(config, 160, seed=21, index=k).padded_to(160, pad_id=0)
            ce = model(pack.tokens.view(1, -1), pack.position_ids.view(1, -1), images=pack.images,
                       packed_seq_params=packed_seq_params(pack.cu_seqlens, pack.max_seqlen),
                       labels=pack.labels.clamp(min=0).view(1, -1))
            total += float((ce.view(-1) * pack.loss_weights).sum())
            weights += float(pack.loss_weights.sum())
    assert logged == pytest.approx(total / weights, rel=1e-6)
