"""The streaming safetensors writer: files it writes are read back by the safetensors library."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors import safe_open

from megatron_infimed.convert.safetensors_writer import SafetensorsWriter


def _specs(tensors):
    return [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]


def test_written_file_reads_back_with_the_library_bitwise(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(3, 5, generator=g), "a.bias": torch.randn(5, generator=g).to(torch.bfloat16),
               "c.half": torch.randn(2, 2, 2, generator=g).half(), "d.empty": torch.zeros(0, 4),
               "e.ids": torch.arange(7)}
    path = tmp_path / "x.safetensors"
    with SafetensorsWriter(path, _specs(tensors), metadata={"format": "pt"}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    assert writer.data_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert set(handle.keys()) == set(tensors)
        for name, tensor in tensors.items():
            read = handle.get_tensor(name)
            assert read.dtype == tensor.dtype and torch.equal(read, tensor)
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_length % 8 == 0


def test_non_contiguous_tensors_are_written_in_logical_order(tmp_path):
    tensor = torch.arange(12.0).reshape(3, 4).t()
    with SafetensorsWriter(tmp_path / "t.safetensors", [("t", torch.float32, (4, 3))]) as writer:
        writer.write("t", tensor)
    with safe_open(tmp_path / "t.safetensors", framework="pt") as handle:
        assert torch.equal(handle.get_tensor("t"), tensor)


@pytest.mark.parametrize("name, tensor, message", [
    ("second", torch.zeros(2), "got tensor 'second', expected 'first' next"),
    ("first", torch.zeros(3), r"tensor 'first' is torch.float32 \(3,\), declared torch.float32 \(2,\)"),
    ("first", torch.zeros(2, dtype=torch.float16), "declared torch.float32"),
])
def test_a_tensor_out_of_order_or_unlike_its_declaration_is_refused(tmp_path, name, tensor, message):
    writer = SafetensorsWriter(tmp_path / "x.safetensors",
                               [("first", torch.float32, (2,)), ("second", torch.float32, (2,))])
    with pytest.raises(ValueError, match=message):
        writer.write(name, tensor)


def test_closing_before_every_declared_tensor_is_written_names_the_missing(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors",
                               [("first", torch.float32, (2,)), ("second", torch.float32, (2,))])
    writer.write("first", torch.zeros(2))
    with pytest.raises(ValueError, match=r"closed before writing 1 declared tensor\(s\): \['second'\]"):
        writer.close()


def test_declaration_errors_name_the_tensor(tmp_path):
    with pytest.raises(ValueError, match="'x' is declared twice"):
        SafetensorsWriter(tmp_path / "a.safetensors", [("x", torch.float32, (1,)), ("x", torch.float32, (1,))])
    with pytest.raises(ValueError, match="tensor 'c' has dtype torch.complex64"):
        SafetensorsWriter(tmp_path / "b.safetensors", [("c", torch.complex64, (1,))])


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_tensor_copied_from_byte_runs_of_another_file_reads_back(tmp_path, monkeypatch, kernel_copy):
    """``copy`` appends bytes that already lie in other files (file to file in the kernel, or
    through a buffer where the file system refuses): the result is the tensor they spell."""
    import errno
    import os

    source = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"xxxx" + source.numpy().tobytes())
    if not kernel_copy:
        def refuse(*args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    fd = os.open(raw, os.O_RDONLY)
    try:
        # rows 4-5 then rows 0-1: a regrouping, as q_proj is gathered from each query group
        runs = [(fd, 4 + 4 * 4 * 4, 2 * 16), (fd, 4, 2 * 16)]
        with SafetensorsWriter(tmp_path / "c.safetensors", [("t", torch.float32, (4, 4))]) as writer:
            writer.copy("t", runs)
    finally:
        os.close(fd)
    with safe_open(tmp_path / "c.safetensors", framework="pt") as handle:
        assert torch.equal(handle.get_tensor("t"), torch.cat([source[4:6], source[0:2]]))


def test_copy_runs_that_do_not_add_up_to_the_declared_size_are_refused(tmp_path):
    writer = SafetensorsWriter(tmp_path / "x.safetensors", [("t", torch.float32, (4,))])
    with pytest.raises(ValueError, match="declared as 16 bytes, the runs hold 12"):
        writer.copy("t", [(0, 0, 12)])
