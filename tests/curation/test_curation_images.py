"""Image loading: JPEG/PNG/DICOM decoding, named load failures, stored bytes."""

import io
import struct
import zlib

import numpy as np
import pytest
from curation_factories import textured
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from megatron_infimed.curation.images import ImageLoadError, letterbox, load_image

MAX = 10_000_000


def write_dicom(path, pixels: np.ndarray, *, photometric="MONOCHROME2", centre=None, width=None,
                slope=1.0, intercept=0.0, signed=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if centre is not None:
        ds.WindowCenter, ds.WindowWidth = centre, width
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def ramp16(h=40, w=40, top=4000) -> np.ndarray:
    return np.tile(np.linspace(0, top, w), (h, 1)).astype(np.uint16)


def pixels(loaded) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(loaded.member_bytes)))


def test_dicom_16bit_without_window_is_stretched_to_full_8bit_range(tmp_path):
    loaded = load_image(write_dicom(tmp_path / "a.dcm", ramp16()), max_pixels=MAX)
    arr = pixels(loaded)
    assert loaded.source_format == "DICOM" and loaded.member_ext == "png"
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255


def test_dicom_window_centre_width_clips_outside_the_window(tmp_path):
    # HU = raw - 1000; window 0 +- 200 HU -> raw 800..1200 maps to 0..255
    raw = ramp16(top=2000)
    loaded = load_image(write_dicom(tmp_path / "w.dcm", raw, centre=0, width=400, intercept=-1000), max_pixels=MAX)
    arr = pixels(loaded)[0]
    hu = raw[0].astype(float) - 1000
    assert (arr[hu <= -200] == 0).all()
    assert (arr[hu >= 200] == 255).all()
    expected = np.round(np.clip((hu + 200) / 400, 0, 1) * 255)
    assert np.abs(arr.astype(float) - expected).max() <= 1


def test_dicom_monochrome1_is_inverted_so_bright_means_dense(tmp_path):
    mono2 = pixels(load_image(write_dicom(tmp_path / "m2.dcm", ramp16()), max_pixels=MAX))
    mono1 = pixels(load_image(write_dicom(tmp_path / "m1.dcm", ramp16(), photometric="MONOCHROME1"), max_pixels=MAX))
    assert np.array_equal(mono1, 255 - mono2)


def test_dicom_signed_pixels_with_window(tmp_path):
    raw = np.tile(np.linspace(-1000, 1000, 32), (32, 1)).astype(np.int16)
    arr = pixels(load_image(write_dicom(tmp_path / "s.dcm", raw, centre=0, width=2000, signed=True), max_pixels=MAX))
    assert arr[0, 0] == 0 and arr[0, -1] == 255


def test_png_and_jpeg_are_stored_as_original_bytes_without_resize(tmp_path):
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG")):
        textured().save(tmp_path / name, format=fmt)
        loaded = load_image(str(tmp_path / name), max_pixels=MAX)
        assert loaded.member_bytes == (tmp_path / name).read_bytes()
        assert loaded.member_ext == ("png" if fmt == "PNG" else "jpg")


def test_image_size_letterboxes_to_a_square_and_keeps_format(tmp_path):
    textured((200, 100)).save(tmp_path / "wide.jpg", format="JPEG")
    loaded = load_image(str(tmp_path / "wide.jpg"), max_pixels=MAX, image_size=64)
    img = Image.open(io.BytesIO(loaded.member_bytes))
    assert img.size == (64, 64) and img.format == "JPEG"
    arr = np.asarray(img)
    assert arr[:10].max() < 20 and arr[-10:].max() < 20  # black padding above and below


def test_letterbox_places_content_centred():
    out = letterbox(Image.new("L", (200, 100), 255), 64)
    arr = np.asarray(out)
    assert arr[16:48].min() == 255 and arr[:15].max() == 0 and arr[49:].max() == 0


def test_16bit_png_is_stretched_not_clipped(tmp_path):
    Image.fromarray(ramp16(top=60000).astype(np.uint16)).save(tmp_path / "deep.png")
    loaded = load_image(str(tmp_path / "deep.png"), max_pixels=MAX)
    arr = pixels(loaded)
    assert arr.dtype == np.uint8 and arr.max() == 255 and len(np.unique(arr)) > 20


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "load/missing_image"),
        (b"", "load/empty_file"),
        (b"this is not an image at all", "load/corrupt_image"),
    ],
)
def test_unloadable_files_raise_a_named_reason(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError) as err:
        load_image(str(path), max_pixels=MAX)
    assert err.value.reason == reason
    assert "x.png" in err.value.detail


def test_truncated_jpeg_is_named_truncated(tmp_path):
    buf = io.BytesIO()
    textured((256, 256)).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError) as err:
        load_image(str(tmp_path / "t.jpg"), max_pixels=MAX)
    assert err.value.reason == "load/truncated_image"


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_with_header(100_000, 100_000))
    with pytest.raises(ImageLoadError) as err:
        load_image(str(tmp_path / "bomb.png"), max_pixels=MAX)
    assert err.value.reason == "load/decompression_bomb"


def test_image_over_configured_max_pixels_is_a_bomb(tmp_path):
    textured((120, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError) as err:
        load_image(str(tmp_path / "big.png"), max_pixels=10_000)
    assert err.value.reason == "load/decompression_bomb" and "120x100" in err.value.detail


def test_zero_width_image_is_refused(tmp_path):
    (tmp_path / "zero.png").write_bytes(png_with_header(0, 10))
    with pytest.raises(ImageLoadError) as err:
        load_image(str(tmp_path / "zero.png"), max_pixels=MAX)
    assert err.value.reason in ("load/zero_size", "load/corrupt_image")
