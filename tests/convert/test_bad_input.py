"""Bad input: a clear error naming the tensor (or field) and what was expected, and no output folder."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_infimed.cli.convert import main


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _variant(source: Path, target: Path, edit) -> Path:
    """A copy of an HF folder as one model.safetensors, with ``edit(tensors)`` applied."""
    target.mkdir()
    tensors = _tensors(source)
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return target


def _import(capsys, language: Path, out: Path, *extra: str) -> str:
    """Runs import-hf (``--preset tiny`` unless ``extra`` picks a model); expects exit code 2 and no output."""
    model = [] if "--config" in extra else ["--preset", "tiny"]
    code = main(["import-hf", "--language", str(language), "--output", str(out), *model, *extra])
    assert code == 2
    assert not out.exists() and not out.with_name(f".{out.name}.partial").exists()
    return capsys.readouterr().err


def test_wrong_shape_names_the_tensor_and_expected_shape(hf_sources, tmp_path, capsys):
    def edit(t):
        t["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(48, 64)

    err = _import(capsys, _variant(hf_sources.qwen3, tmp_path / "bad", edit), tmp_path / "out")
    assert "'model.layers.1.self_attn.k_proj.weight' has shape (48, 64), expected (32, 64)" in err


def test_missing_tensor_is_named_with_its_shape(hf_sources, tmp_path, capsys):
    bad = _variant(hf_sources.qwen3, tmp_path / "bad", lambda t: t.pop("model.layers.0.self_attn.q_norm.weight"))
    err = _import(capsys, bad, tmp_path / "out")
    assert "missing tensor(s): 'model.layers.0.self_attn.q_norm.weight' (16,)" in err


def test_unexpected_tensor_is_named(hf_sources, tmp_path, capsys):
    def edit(t):
        t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)

    err = _import(capsys, _variant(hf_sources.qwen3, tmp_path / "bad", edit), tmp_path / "out")
    assert "unexpected tensor(s): model.layers.0.self_attn.q_proj.bias" in err


def test_vision_shape_mismatch_is_caught_before_writing(hf_sources, tmp_path, capsys):
    def edit(t):
        t["encoder.layers.0.mlp.fc1.bias"] = torch.zeros(65)

    vision = _variant(hf_sources.siglip, tmp_path / "vision", edit)
    err = _import(capsys, hf_sources.qwen3, tmp_path / "out", "--vision", str(vision))
    assert "'encoder.layers.0.mlp.fc1.bias' has shape (65,), expected (64,)" in err


def test_preset_that_does_not_match_the_checkpoint_names_the_fields(hf_sources, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["import-hf", "--language", str(hf_sources.qwen3), "--output", str(out), "--preset", "infimed-1.7b"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "does not match model 'infimed-1.7b'" in err and "language.hidden_size: checkpoint 64, preset 2048" in err


def test_untied_checkpoint_without_lm_head_is_refused(hf_sources, tmp_path, capsys):
    folder = _variant(hf_sources.qwen3, tmp_path / "untied", lambda t: None)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    err = _import(capsys, folder, tmp_path / "out", "--config", str(_tiny_untied_config(tmp_path)))
    assert "'lm_head.weight' (2048, 64) is needed (found: missing)" in err


def _tiny_untied_config(tmp_path: Path) -> Path:
    from megatron_infimed.config.presets import get_preset

    data = get_preset("tiny").to_dict()
    data["language"]["tie_word_embeddings"] = False
    (tmp_path / "model_config.json").write_text(json.dumps(data))
    return tmp_path / "model_config.json"


def test_existing_output_is_left_untouched(hf_sources, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["import-hf", "--language", str(hf_sources.qwen3), "--output", str(out), "--preset", "tiny"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_export_of_checkpoint_that_contradicts_its_config_names_the_tensor(tp1_checkpoint, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tp1_checkpoint, checkpoint)
    config_file = checkpoint / "iter_0000000" / "model_config.json"
    config = json.loads(config_file.read_text())
    config["language"]["ffn_hidden_size"] = 96
    config_file.write_text(json.dumps(config))
    out = tmp_path / "out"
    # Checksums off: model_config.json was edited after the save, and the shape check is the subject.
    assert main(["export-hf", "--checkpoint", str(checkpoint), "--output", str(out), "--no-progress",
                 "--no-verify-checkpoint"]) == 2
    assert "'language_model.decoder.layers.0.mlp.linear_fc1.weight' has shape (256, 64), expected (192, 64)" \
        in capsys.readouterr().err
    assert not out.exists()


def test_export_of_a_folder_that_is_no_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export-hf", "--checkpoint", str(tmp_path), "--output", str(out)]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err and not out.exists()


def test_export_failing_half_way_leaves_nothing_behind(tp1_checkpoint, tmp_path, monkeypatch):
    from megatron_infimed.convert import export_hf as module

    calls = {"n": 0}
    real_sources = module.DistCheckpointReader.row_sources

    def failing_sources(self, name, layer):  # called for every tensor the export writes
        calls["n"] += 1
        if calls["n"] == 20:  # after the first shards are on disk
            raise OSError("disk full")
        return real_sources(self, name, layer)

    monkeypatch.setattr(module.DistCheckpointReader, "row_sources", failing_sources)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        module.export_hf(tp1_checkpoint, out, max_shard_size="50KB", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_checkpoint_metadata_naming_a_foreign_class_is_not_unpickled(tmp_path):
    from megatron_infimed.convert.dist_reader import DistCheckpointReader

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(pickle.UnpicklingError, match="shutil.rmtree"):
        DistCheckpointReader(tmp_path)
    assert (tmp_path / "victim").is_dir()


def test_export_of_a_checkpoint_with_foreign_metadata_exits_2_naming_the_class(tp1_checkpoint, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    iteration = tmp_path / "iter"
    shutil.copytree(tp1_checkpoint / "iter_0000000", iteration)
    (iteration / ".metadata").write_bytes(pickle.dumps(Payload()))
    (tmp_path / "victim").mkdir()
    out = tmp_path / "out"
    # Checksums off: the metadata itself must be refused, whatever a manifest says of it.
    assert main(["export-hf", "--checkpoint", str(iteration), "--output", str(out), "--no-progress",
                 "--no-verify-checkpoint"]) == 2
    assert "refers to shutil.rmtree" in capsys.readouterr().err
    assert (tmp_path / "victim").is_dir() and not out.exists()


def test_parallel_import_relaunches_under_torchrun_and_cleans_up_a_failed_run(hf_sources, tmp_path, monkeypatch):
    import megatron_infimed.cli.convert as cli

    out = tmp_path / "out"
    launched = []

    def fake_call(command):
        launched.append(command)
        (tmp_path / ".out.partial").mkdir()  # what a killed rank leaves behind
        return 1

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    argv = ["import-hf", "--language", str(hf_sources.qwen3), "--output", str(out), "--preset", "tiny",
            "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
    assert cli.main(argv) == 1
    assert launched[0][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert launched[0][6:] == ["megatron_infimed.cli.convert", *argv]
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_import_without_preset_on_a_small_vit_says_what_to_pass(hf_sources, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["import-hf", "--language", str(hf_sources.qwen3), "--vision", str(hf_sources.siglip),
                 "--output", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "8x8 patch grid" in err and "reduction.pooled_grid=12 must be in 1..8" in err
    assert "pass --preset NAME" in err and '"pooled_grid": 8' in err


def test_import_with_a_config_whose_reduction_does_not_fit_names_the_config(hf_sources, tmp_path, capsys):
    from megatron_infimed.config.presets import get_preset

    data = get_preset("tiny").to_dict()
    data["reduction"]["pooled_grid"] = 20
    (tmp_path / "model_config.json").write_text(json.dumps(data))
    err = _import(capsys, hf_sources.qwen3, tmp_path / "out", "--vision", str(hf_sources.siglip),
                  "--config", str(tmp_path / "model_config.json"))
    assert f"--config {tmp_path / 'model_config.json'}: reduction.pooled_grid=20 must be in 1..8" in err
    assert '"pooled_grid": 8' in err
