"""Tensor and pipeline parallel layouts, in one 4-process torchrun (parallel state is process-global)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
pytestmark = pytest.mark.slow


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.fixture(scope="module")
def parallel_run(hf_sources, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parallel")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
         str(Path(__file__).with_name("tp_worker.py")), str(hf_sources.qwen3), str(hf_sources.siglip),
         str(root / "tp2"), str(root / "tp2pp2"), str(root / "tp2.safetensors")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_import_at_tp2_text_logits_equal_qwen3_for_causal_lm(parallel_run, hf_sources):
    result = load_file(parallel_run / "tp2.safetensors")
    with torch.no_grad():
        text = hf_sources.qwen3_model(result["tokens"]).logits
    assert result["logits"].shape == text.shape
    assert (result["logits"] - text).abs().max().item() <= TOL


def test_import_at_tp2_vision_features_equal_siglip(parallel_run, hf_sources):
    result = load_file(parallel_run / "tp2.safetensors")
    with torch.no_grad():
        vision = hf_sources.siglip_model(pixel_values=result["pixels"]).last_hidden_state
    assert (result["vision"] - vision).abs().max().item() <= TOL


def test_export_from_tp2_pp2_checkpoint_equals_export_from_tp1(parallel_run, tp1_export, tmp_path):
    from megatron_infimed.convert.export_hf import export_hf

    layout = json.loads((parallel_run / "tp2pp2" / "iter_0000000" / "layout.json").read_text())
    assert (layout["tp"], layout["pp"]) == (2, 2)
    exported = _tensors(export_hf(parallel_run / "tp2pp2", tmp_path / "export", progress=False))
    reference = _tensors(tp1_export)
    assert exported.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(exported[name], tensor), name


def test_export_from_tp2_checkpoint_equals_export_from_tp1(parallel_run, tp1_export, tmp_path):
    from megatron_infimed.convert.export_hf import export_hf

    exported = _tensors(export_hf(parallel_run / "tp2", tmp_path / "export", progress=False))
    reference = _tensors(tp1_export)
    assert all(torch.equal(exported[name], tensor) for name, tensor in reference.items())
