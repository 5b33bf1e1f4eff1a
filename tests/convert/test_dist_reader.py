"""The torch_dist reader: direct reads from the stored records equal DCP's own, and anything it
cannot read as one byte range goes through DCP."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megatron_infimed.convert.dist_reader import DistCheckpointReader


@pytest.fixture
def saved(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {
        "decoder.layers.w": torch.randn(3, 4, 5, generator=g),            # stacked [layers, ...]
        "embedding.weight": torch.randn(6, 4, generator=g).to(torch.bfloat16),
        "transposed.weight": torch.randn(5, 7, generator=g).t(),          # stored non-contiguous
        "empty.bias": torch.zeros(0),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process is the intent
        dcp.save({k: v.clone() if v.is_contiguous() else v for k, v in state.items()}, checkpoint_id=str(tmp_path),
                 no_dist=True)
    return tmp_path, state


def test_every_tensor_and_layer_reads_back_exactly(saved):
    directory, state = saved
    with DistCheckpointReader(directory) as reader:
        for layer in range(3):
            assert torch.equal(reader.read(f"decoder.layers.{layer}.w", layer), state["decoder.layers.w"][layer])
        assert reader.read("embedding.weight", None).dtype == torch.bfloat16
        assert torch.equal(reader.read("embedding.weight", None), state["embedding.weight"])
        assert torch.equal(reader.read("transposed.weight", None), state["transposed.weight"])
        assert reader.read("empty.bias", None).shape == (0,)


def test_contiguous_records_are_read_directly_and_a_transposed_one_through_dcp(saved, monkeypatch):
    directory, state = saved
    reader = DistCheckpointReader(directory)
    calls = []
    real = reader._read_dcp
    monkeypatch.setattr(reader, "_read_dcp", lambda key, *a: (calls.append(key), real(key, *a)))
    reader.read("decoder.layers.1.w", 1)
    reader.read("embedding.weight", None)
    assert calls == []
    assert torch.equal(reader.read("transposed.weight", None), state["transposed.weight"])
    assert calls == ["transposed.weight"]


def test_a_memory_mapped_read_is_copy_on_write(saved):
    directory, state = saved
    reader = DistCheckpointReader(directory)
    first = reader.read("decoder.layers.2.w", 2)
    first.fill_(7.0)
    assert torch.equal(reader.read("decoder.layers.2.w", 2), state["decoder.layers.w"][2])
    reader.close()
    assert torch.equal(DistCheckpointReader(directory).read("decoder.layers.2.w", 2), state["decoder.layers.w"][2])


def test_a_truncated_file_is_named(saved):
    directory, _ = saved
    [data] = list(directory.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 2])
    reader = DistCheckpointReader(directory)
    with pytest.raises(ValueError, match=rf"{data.name} is truncated: tensor .* ends at byte"):
        for name, layer in [("decoder.layers.0.w", 0), ("embedding.weight", None), ("transposed.weight", None),
                            ("empty.bias", None)]:
            reader.read(name, layer)


def test_an_unknown_parameter_names_what_was_looked_for(saved):
    directory, _ = saved
    with pytest.raises(KeyError, match="decoder.layers.0.missing"):
        DistCheckpointReader(directory).read("decoder.layers.0.missing", 0)


def test_row_sources_cover_every_row_and_point_at_its_bytes(saved):
    import os

    directory, state = saved
    reader = DistCheckpointReader(directory)
    [(first, rows, fd, offset)] = reader.row_sources("decoder.layers.2.w", 2)
    assert (first, rows) == (0, 4)
    assert os.pread(fd, 4 * 5 * 4, offset) == state["decoder.layers.w"][2].numpy().tobytes()
    assert reader.row_sources("transposed.weight", None) is None  # not one run of bytes: read instead


def test_reads_work_where_the_os_has_no_preadv(tmp_path, monkeypatch):
    import os

    from megatron_infimed.convert.dist_reader import _FileSlice, _read_exactly

    data = bytes(range(256)) * 64  # 16 KiB: beyond _FileSlice's cached first and last 4 KiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    monkeypatch.delattr(os, "preadv")
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = bytearray(5000)
        _read_exactly(fd, memoryview(buffer), 3000, "blob")
        assert bytes(buffer) == data[3000:8000]
        window = _FileSlice(fd, 100, 16000)
        window.seek(6000)
        middle = bytearray(1000)
        assert window.readinto(middle) == 1000 and bytes(middle) == data[6100:7100]
        with pytest.raises(ValueError, match="blob ends 100 bytes early"):
            _read_exactly(fd, memoryview(bytearray(200)), len(data) - 100, "blob")
    finally:
        os.close(fd)


def test_at_most_a_bounded_number_of_checkpoint_files_stay_open(saved, monkeypatch):
    directory, state = saved
    reader = DistCheckpointReader(directory)
    monkeypatch.setattr(DistCheckpointReader, "MAX_OPEN_FILES", 1)
    for layer in range(3):
        assert torch.equal(reader.read(f"decoder.layers.{layer}.w", layer), state["decoder.layers.w"][layer])
    assert len(reader._fds) <= 1
