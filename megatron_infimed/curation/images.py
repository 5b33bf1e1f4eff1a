"""Image loading (JPEG, PNG, DICOM) and the bytes stored in shards.

Every load failure is an ``ImageLoadError`` carrying a named reason (``load/missing_image``,
``load/empty_file``, ``load/truncated_image``, ``load/corrupt_image``, ``load/decompression_bomb``,
``load/zero_size``, ``load/dicom_without_pixels``, ``load/image_outside_root``) so the pipeline can
count it.

What is stored (the shard's image member):

| source            | no ``image_size``             | ``image_size=N``                     |
|-------------------|-------------------------------|--------------------------------------|
| JPEG, L or RGB    | original bytes (``jpg``)      | letterboxed N x N, JPEG q95 (``jpg``) |
| PNG, L or RGB     | original bytes (``png``)      | letterboxed N x N, PNG (``png``)      |
| DICOM, other mode | windowed 8-bit PNG (``png``)  | letterboxed N x N, PNG (``png``)      |

Lossless sources stay lossless; a JPEG is re-encoded only when it must be resized. Letterboxing
(longer side to N, black padding) keeps the anatomy undistorted and uncropped.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Scoring statistics and hashes are computed on a thumbnail of at most this side.
STATS_SIDE = 256
_DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageLoadError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class LoadedImage:
    path: str
    raw: bytes  # the file's bytes (part of the exact-dedup key)
    source_format: str  # "JPEG" | "PNG" | "DICOM" | other PIL format name
    size: tuple[int, int]  # original (width, height)
    thumbnail: np.ndarray  # uint8 [H, W] (L) or [H, W, 3] (RGB), longer side <= STATS_SIDE
    member_ext: str  # "jpg" | "png"
    member_bytes: bytes  # what goes into the shard

    @property
    def gray(self) -> np.ndarray:
        if self.thumbnail.ndim == 2:
            return self.thumbnail
        return np.asarray(Image.fromarray(self.thumbnail, "RGB").convert("L"))


def is_dicom(path: str, raw: bytes) -> bool:
    return path.lower().endswith(_DICOM_SUFFIXES) or raw[128:132] == b"DICM"


def dicom_to_image(raw: bytes, path: str) -> Image.Image:
    """Decode a DICOM file to an 8-bit PIL image.

    Rescale slope/intercept first (stored values -> e.g. Hounsfield units), then the header's
    first window centre/width (linear, as in PS3.3 C.11.2.1.2), else the image's own min..max;
    MONOCHROME1 (high = dark) is inverted so bright always means dense. Multi-frame: first frame.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
        if "PixelData" not in ds:
            raise ImageLoadError("load/dicom_without_pixels", f"{path}: DICOM file has no PixelData element")
        pixels = ds.pixel_array
    except ImageLoadError:
        raise
    except Exception as exc:  # pydicom raises many types for broken files
        raise ImageLoadError("load/corrupt_image", f"{path}: unreadable DICOM ({exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and pixels.ndim == 3:
        return Image.fromarray(pixels.astype(np.uint8), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None:
        # Multi-valued windows hold alternative views; the first is the default one.
        centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        width = max(float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width), 1.0)
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L")


def _open_pil(raw: bytes, path: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError("load/decompression_bomb", f"{path}: {exc}") from exc
    except Exception as exc:
        raise ImageLoadError("load/corrupt_image", f"{path}: not a decodable image ({exc})") from exc
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageLoadError("load/zero_size", f"{path}: image is {width}x{height}")
    if width * height > max_pixels:
        # Checked from the header, before any pixel is decoded.
        raise ImageLoadError(
            "load/decompression_bomb", f"{path}: {width}x{height} = {width * height} pixels > max_pixels {max_pixels}"
        )
    return img


def _decode(img: Image.Image, path: str, *, draft: bool) -> Image.Image:
    """Fully decode; ``draft`` lets JPEG decode at reduced scale (enough for statistics)."""
    try:
        if draft and img.format == "JPEG":
            img.draft(img.mode, (STATS_SIDE, STATS_SIDE))
        img.load()
    except OSError as exc:
        reason = "load/truncated_image" if "truncat" in str(exc).lower() else "load/corrupt_image"
        raise ImageLoadError(reason, f"{path}: {exc}") from exc
    except Exception as exc:
        raise ImageLoadError("load/corrupt_image", f"{path}: {exc}") from exc
    return img


def _to_l_or_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float PNG: stretch the used range to 8 bits rather than clip it.
        arr = np.asarray(img, dtype=np.float64)
        low, high = float(arr.min()), float(arr.max())
        return Image.fromarray(np.round((arr - low) / max(high - low, 1e-6) * 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become black, the background of medical images.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def letterbox(img: Image.Image, size: int) -> Image.Image:
    """Longer side to ``size`` (bicubic), centred on a black ``size`` x ``size`` canvas.

    Example: 200x100 with size=64 -> content 64x32 pasted at (0, 16).
    """
    width, height = img.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = img.resize(new, Image.Resampling.BICUBIC)
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def _encode(img: Image.Image, ext: str) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        img.save(buffer, format="JPEG", quality=95)
    else:
        img.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _thumbnail(img: Image.Image) -> np.ndarray:
    small = img if img.mode in ("L", "RGB") else img.convert("RGB")
    if max(small.size) > STATS_SIDE:
        small = small.copy()
        small.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8)


def load_image(path: str, *, max_pixels: int, image_size: int | None = None) -> LoadedImage:
    """Read, validate and prepare one image for scoring and storage; raises ``ImageLoadError``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise ImageLoadError("load/missing_image", f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageLoadError("load/missing_image", f"{path}: cannot read ({exc})") from exc
    if not raw:
        raise ImageLoadError("load/empty_file", f"{path}: file has 0 bytes")

    if is_dicom(path, raw):
        img = dicom_to_image(raw, path)
        if img.width * img.height > max_pixels:
            raise ImageLoadError("load/decompression_bomb", f"{path}: DICOM {img.width}x{img.height} > max_pixels")
        source_format, size = "DICOM", img.size
        stored, ext, keep_raw = img, "png", False
    else:
        img = _open_pil(raw, path, max_pixels)
        source_format, size = str(img.format), img.size
        keep_raw = image_size is None and source_format in ("JPEG", "PNG") and img.mode in ("L", "RGB")
        ext = "jpg" if source_format == "JPEG" else "png"
        # Statistics need only a draft decode when the original bytes are stored unchanged.
        img = _decode(img, path, draft=keep_raw)
        stored = _to_l_or_rgb(img)

    thumbnail = _thumbnail(stored)
    if keep_raw:
        member = raw
    else:
        member = _encode(letterbox(stored, image_size) if image_size else stored, ext)
    return LoadedImage(path, raw, source_format, size, thumbnail, ext, member)


def check_under_root(path: str, real_root: Path) -> None:
    """Refuse ``path`` unless its real path (symlinks followed) lies under ``real_root`` (already resolved).

    Example: root ``/data/imgs``, ``/data/imgs/../secret.png`` or a link ``/data/imgs/a.png -> /etc/x``
    -> ``ImageLoadError("load/image_outside_root", ...)``; a record must not copy other files into shards.
    """
    real = Path(path).resolve()
    if not real.is_relative_to(real_root):
        raise ImageLoadError("load/image_outside_root", f"{path}: resolves to {real}, outside the image root "
                             f"{real_root}; expected a file under it (--allow-outside-image-root permits this)")

