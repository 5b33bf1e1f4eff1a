"""export-hf refuses what would ship a broken model: another model's files from the tokenizer folder,
non-finite weights, and checkpoint bytes that differ from those written at save time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_infimed.checkpoint.integrity import MANIFEST, CheckpointCorrupted, write_manifest
from megatron_infimed.cli.convert import main
from megatron_infimed.convert.dist_reader import DistCheckpointReader
from megatron_infimed.convert.export_hf import export_hf

SECRET = "HF_TOKEN=hf_do_not_ship_me"
# A language tensor that the stored-dtype export copies file to file (no read in Python).
FC2 = ("language_model.decoder.layers.1.mlp.linear_fc2.weight", 1)
FC2_HF = "model.language_model.layers.1.mlp.down_proj.weight"
FC2_TEXT = "model.layers.1.mlp.down_proj.weight"  # its name in a --language-only export


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _copy(checkpoint: Path, target: Path) -> Path:
    """A copy of the checkpoint's iteration folder, with a manifest of its bytes as they are now."""
    shutil.copytree(checkpoint / "iter_0000000", target)
    write_manifest(target)
    return target


def _overwrite_first_element(iteration: Path, name: str, layer: int | None, value: torch.Tensor) -> Path:
    """Write ``value`` over the first element of a stored tensor, in its .distcp file; returns that file."""
    with DistCheckpointReader(iteration) as reader:
        head = reader.read(name, layer).reshape(-1)[:4].numpy().tobytes()
    hits = [(f, f.read_bytes().find(head)) for f in sorted(iteration.glob("*.distcp"))]
    (file, offset), = [(f, at) for f, at in hits if at >= 0]
    data = bytearray(file.read_bytes())
    data[offset:offset + value.element_size()] = value.numpy().tobytes()
    file.write_bytes(bytes(data))
    return file


# --- the tokenizer folder contributes tokenizer files only ----------------------------------------


@pytest.fixture(scope="module")
def model_folder_tokenizer(hf_sources, tmp_path_factory) -> Path:
    """A Qwen3 download used as --tokenizer: config.json, weight index, and a .env with a secret."""
    folder = tmp_path_factory.mktemp("tok") / "Qwen3"
    shutil.copytree(hf_sources.qwen3, folder)
    (folder / ".env").write_text(SECRET + "\n")
    assert (folder / "model.safetensors.index.json").is_file() and (folder / "config.json").is_file()
    return folder


@pytest.fixture(scope="module")
def export_with_model_folder_tokenizer(tp1_checkpoint, model_folder_tokenizer, tmp_path_factory) -> Path:
    return export_hf(tp1_checkpoint, tmp_path_factory.mktemp("export") / "out", tokenizer=model_folder_tokenizer,
                     max_shard_size="200KB", progress=False)


def test_a_model_folder_as_tokenizer_does_not_replace_the_exports_config_or_index(
        export_with_model_folder_tokenizer, tp1_export):
    out = export_with_model_folder_tokenizer
    for name in ("config.json", "model.safetensors.index.json", "generation_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((tp1_export / name).read_text()), name
    assert json.loads((out / "config.json").read_text())["model_type"] == "infimed"


def test_files_outside_the_tokenizer_allowlist_are_not_exported(export_with_model_folder_tokenizer):
    out = export_with_model_folder_tokenizer
    assert not (out / ".env").exists()
    assert not any(SECRET.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_export_with_a_model_folder_as_tokenizer_loads_as_our_model(export_with_model_folder_tokenizer):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from megatron_infimed.data.chat_template import CHAT_TEMPLATE_JINJA

    model = AutoModelForImageTextToText.from_pretrained(export_with_model_folder_tokenizer, trust_remote_code=True)
    assert type(model).__name__ == "InfiMedForConditionalGeneration"
    tokenizer = AutoTokenizer.from_pretrained(export_with_model_folder_tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE_JINJA


# --- non-finite weights ---------------------------------------------------------------------------


def test_nan_copied_file_to_file_is_refused_naming_the_tensor_and_nothing_is_left(tp1_checkpoint, tmp_path,
                                                                                  monkeypatch):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    _overwrite_first_element(iteration, *FC2, torch.tensor([float("nan")]))
    write_manifest(iteration)  # saved that way: the bytes are intact, the weights are not
    reads = []
    real_read = DistCheckpointReader.read
    monkeypatch.setattr(DistCheckpointReader, "read", lambda self, *a: reads.append(a) or real_read(self, *a))
    with pytest.raises(ValueError, match=f"'{FC2_HF}' .* 1 NaN and 0 inf value"):
        export_hf(iteration, tmp_path / "out", progress=False)
    assert reads == []  # the stored dtype: no tensor went through Python, the written shard was checked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000000"]


def test_the_finite_check_counts_across_chunks_and_names_the_first_bad_element(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from megatron_infimed.convert import finite

    weight = torch.zeros(50, 10)
    weight[20, 3], weight[31, 0], weight[49, 9] = float("nan"), float("inf"), -float("inf")
    save_file({"ok": torch.ones(7), "w": weight}, str(tmp_path / "shard.safetensors"))
    monkeypatch.setattr(finite, "CHUNK_BYTES", 3 * 10 * 4)  # three rows a chunk
    with pytest.raises(finite.NonFiniteWeights, match=r"'w' \(from 'x', in shard.safetensors\) holds 1 NaN and 2 inf "
                                                      r"value\(s\), the first at flat index 203;"):
        finite.check_finite(tmp_path / "shard.safetensors", {"ok": "from 'y'", "w": "from 'x'"})


def test_a_value_that_overflows_float16_is_refused(tp1_checkpoint, tmp_path):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    _overwrite_first_element(iteration, *FC2, torch.tensor([1e6]))
    write_manifest(iteration)
    export_hf(iteration, tmp_path / "fp32", language_only=True, progress=False)  # finite as stored
    with pytest.raises(ValueError, match=f"'{FC2_TEXT}' .* 0 NaN and 1 inf value"):
        export_hf(iteration, tmp_path / "fp16", language_only=True, dtype="float16", progress=False)
    assert not (tmp_path / "fp16").exists()


def test_allow_non_finite_exports_the_nan_as_it_is(tp1_checkpoint, tmp_path):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    _overwrite_first_element(iteration, *FC2, torch.tensor([float("nan")]))
    write_manifest(iteration)
    out = tmp_path / "out"
    assert main(["export-hf", "--checkpoint", str(iteration), "--output", str(out), "--language-only",
                 "--allow-non-finite", "--no-progress"]) == 0
    weight = _tensors(out)[FC2_TEXT]
    assert torch.isnan(weight.reshape(-1)[0]) and torch.isfinite(weight.reshape(-1)[1:]).all()


# --- checksums ------------------------------------------------------------------------------------


def test_a_corrupted_distcp_file_fails_the_export_naming_the_file(tp1_checkpoint, tmp_path, capsys):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    corrupted = _overwrite_first_element(iteration, *FC2, torch.tensor([0.125]))
    out = tmp_path / "out"
    with pytest.raises(CheckpointCorrupted, match=f"{corrupted} is corrupted"):
        export_hf(iteration, out, progress=False)
    assert main(["export-hf", "--checkpoint", str(iteration), "--output", str(out), "--no-progress"]) == 2
    assert f"{corrupted} is corrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000000"]


def test_no_verify_checkpoint_exports_a_corrupted_checkpoint(tp1_checkpoint, tmp_path):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    _overwrite_first_element(iteration, *FC2, torch.tensor([0.125]))
    out = tmp_path / "out"
    assert main(["export-hf", "--checkpoint", str(iteration), "--output", str(out), "--language-only",
                 "--no-verify-checkpoint", "--no-progress"]) == 0
    assert _tensors(out)[FC2_TEXT].reshape(-1)[0].item() == 0.125


def test_a_checkpoint_without_manifest_exports_with_a_warning(tp1_checkpoint, tmp_path):
    iteration = _copy(tp1_checkpoint, tmp_path / "iter_0000000")
    (iteration / MANIFEST).unlink()
    with pytest.warns(UserWarning, match=f"{MANIFEST}"):
        out = export_hf(iteration, tmp_path / "out", language_only=True, progress=False)
    assert FC2_TEXT in _tensors(out)
