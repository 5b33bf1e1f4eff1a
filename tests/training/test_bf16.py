"""bf16 training runs on the CPU through megatron-core's real mixed-precision path: Float16Module
(bf16 weights and activations, the vision tower included), Float16OptimizerWithFloat16Params
(fp32 main weights), gradients reduced in fp32, the loss in fp32."""

import json
import subprocess
import sys

import pytest
from trainrun import read_metrics

pytestmark = pytest.mark.slow
ITERS = 20


def run(tmp_path, name, *flags, iters=ITERS, save=True):
    command = [sys.executable, "-m", "megatron_infimed.cli.train", "--preset", "tiny", "--mock-data",
               "--seq-length", "256", "--train-iters", str(iters), "--lr", "1e-3", "--seed", "3",
               "--run-dir", str(tmp_path / name), *flags]
    if save:
        command += ["--save", str(tmp_path / f"{name}-ckpt"), "--load", str(tmp_path / f"{name}-ckpt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(tmp_path / name)


@pytest.fixture(scope="module")
def fp32_and_bf16(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return run(root, "fp32", save=False), run(root, "bf16", "--bf16", save=False)


def test_bf16_losses_track_fp32_losses(fp32_and_bf16):
    fp32, bf16 = fp32_and_bf16
    assert len(fp32) == len(bf16) == ITERS
    for a, b in zip(fp32, bf16):
        assert b["loss"] == b["loss"], f"NaN at iteration {b['iteration']}"
        assert abs(a["loss"] - b["loss"]) <= 2e-2 * abs(a["loss"]), (a["iteration"], a["loss"], b["loss"])
    assert bf16[-1]["loss"] < bf16[0]["loss"]  # and it learns


def test_bf16_weights_are_bf16_and_main_weights_fp32(tmp_path):
    run(tmp_path, "one", "--bf16", iters=1)
    saved = json.loads((tmp_path / "one-ckpt" / "iter_0000001" / "run_config.json").read_text())
    assert saved["model"]["bf16"] is True
    import torch

    from megatron_infimed.convert.dist_reader import DistCheckpointReader

    with DistCheckpointReader(tmp_path / "one-ckpt" / "iter_0000001") as reader:
        assert reader.dtype("language_model.decoder.final_layernorm.weight", None) == torch.bfloat16
        assert reader.dtype("vision_model.conv1.weight", None) == torch.bfloat16


def test_a_bf16_checkpoint_resumes_bitwise(tmp_path):
    schedule = ("--bf16", "--lr-decay-iters", "6")  # the same schedule whatever --train-iters says
    whole = run(tmp_path, "whole", *schedule, iters=6, save=False)
    run(tmp_path, "split", *schedule, iters=3)
    resumed = run(tmp_path, "split", *schedule, iters=6)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in whole]
