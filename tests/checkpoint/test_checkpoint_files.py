"""The checkpoint folder's own files: the tokenizer allowlist, the checksum manifest, and the
restricted reader of DCP's pickled ``.metadata``."""

import pickle
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_infimed.checkpoint import integrity
from megatron_infimed.checkpoint.metadata import UnsafeCheckpoint, read_metadata
from megatron_infimed.checkpoint.tokenizer_files import copy_tokenizer


@pytest.fixture
def model_folder(tmp_path):
    """What a Hugging Face model folder handed over as ``--tokenizer`` may hold."""
    folder = tmp_path / "qwen3"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (folder / name).write_text(f"the {name}")
    (folder / "config.json").write_text('{"model_type": "qwen3"}')
    (folder / "model.safetensors.index.json").write_text("{}")
    (folder / ".env").write_text("HF_TOKEN=hf_secret")
    (folder / "sub").mkdir()
    return folder


def test_only_tokenizer_files_are_copied_from_a_model_folder(model_folder, tmp_path):
    copied = copy_tokenizer(model_folder, tmp_path / "out")
    assert sorted(copied) == ["merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(copied)


def test_a_sentencepiece_model_file_is_copied_alone(tmp_path):
    (tmp_path / "tok.model").write_bytes(b"sp")
    (tmp_path / ".env").write_text("secret")
    assert copy_tokenizer(tmp_path / "tok.model", tmp_path / "out") == ["tok.model"]
    assert copy_tokenizer(tmp_path, tmp_path / "out2") == ["tok.model"]


def test_protect_refuses_to_overwrite_a_file_already_written(model_folder, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "vocab.json").write_text("ours")
    with pytest.raises(FileExistsError, match="vocab.json"):
        copy_tokenizer(model_folder, tmp_path / "out", protect=True)
    assert (tmp_path / "out" / "vocab.json").read_text() == "ours"


def test_a_file_that_is_no_tokenizer_is_refused(tmp_path):
    (tmp_path / ".env").write_text("secret")
    with pytest.raises(ValueError, match="neither a SentencePiece"):
        copy_tokenizer(tmp_path / ".env", tmp_path / "out")


@pytest.fixture
def checkpoint_folder(tmp_path):
    folder = tmp_path / "iter_0000001"
    (folder / "loader").mkdir(parents=True)
    (folder / "a.distcp").write_bytes(bytes(range(256)) * 64)
    (folder / "loader" / "dp0.pt").write_bytes(b"state")
    integrity.write_manifest(folder)
    return folder


def test_the_manifest_lists_every_file_in_sha256sum_format(checkpoint_folder):
    lines = (checkpoint_folder / integrity.MANIFEST).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["a.distcp", "loader/dp0.pt"]
    assert integrity.verify(checkpoint_folder) is True


def test_a_flipped_byte_is_named(checkpoint_folder):
    data = bytearray((checkpoint_folder / "a.distcp").read_bytes())
    data[100] ^= 1
    (checkpoint_folder / "a.distcp").write_bytes(bytes(data))
    with pytest.raises(integrity.CheckpointCorrupted, match="a.distcp is corrupted"):
        integrity.verify(checkpoint_folder)


def test_a_missing_file_is_named(checkpoint_folder):
    (checkpoint_folder / "loader" / "dp0.pt").unlink()
    with pytest.raises(integrity.CheckpointCorrupted, match="missing loader/dp0.pt"):
        integrity.verify(checkpoint_folder)


def test_ranks_share_the_files_to_check(checkpoint_folder):
    (checkpoint_folder / "loader" / "dp0.pt").write_bytes(b"changed")
    assert integrity.verify(checkpoint_folder, part=(0, 2)) is True  # a.distcp only
    with pytest.raises(integrity.CheckpointCorrupted, match="dp0.pt"):
        integrity.verify(checkpoint_folder, part=(1, 2))


def test_a_folder_without_manifest_loads_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="not verified"):
        assert integrity.verify(tmp_path) is False


def test_real_dcp_metadata_is_read(tmp_path):
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(tmp_path))
    assert "w" in read_metadata(tmp_path).state_dict_metadata


def test_metadata_naming_another_object_is_refused_before_it_runs(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(victim),))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UnsafeCheckpoint, match="shutil.rmtree"):
        read_metadata(tmp_path)
    assert victim.is_dir()
