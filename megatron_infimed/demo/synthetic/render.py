"""Radiology-like and general images drawn with numpy/PIL, for the synthetic data set.

Each modality has a cue a small model can see at 64 px:

| modality | cue                                                                 |
|----------|---------------------------------------------------------------------|
| CT       | body cross-section on black, bright bone (skull ring or spine)       |
| MRI      | same section, bright subcutaneous-fat rim, dark bone, bright fluid  |
| X-ray    | frontal projection filling the frame, bright vertical spine band    |

Lesions are bright, soft-edged discs inside the body (always the brightest thing in the image),
so "Is there a lesion?" is answerable from the pixels. ``shift`` renders the same anatomy at half
resolution, inverted, with stronger noise and blur: the ``shifted`` distribution.
Locations use the radiological convention: the patient's left is the image's right.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MODALITIES = ("CT", "MRI", "X-ray")
ORGANS = {"brain": "head", "lungs": "chest", "liver": "abdomen"}  # organ -> body region
LOCATIONS = ("right upper", "left upper", "right lower", "left lower")  # patient orientation
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 180), "orange": (245, 140, 20)}
BACKGROUNDS = {"light grey": (215, 215, 215), "white": (250, 250, 250), "beige": (240, 230, 205)}
SHAPES = ("circle", "square", "triangle")

# Per modality: intensities of background, body, bone, organ tissue, air (lungs), fluid, fat rim.
_TISSUE = {
    "CT": dict(background=0.02, body=0.42, bone=0.7, tissue=0.5, air=0.06, fluid=0.2, rim=None),
    "MRI": dict(background=0.0, body=0.3, bone=0.06, tissue=0.45, air=0.03, fluid=0.7, rim=0.68),
}


def _ellipse(xx, yy, cx, cy, ax, ay):
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0


def lesion_centre(rng: np.random.Generator, organ: str, location: str) -> tuple[float, float]:
    """A point (x, y in [-1, 1]) inside the organ's area, in the quadrant ``location`` names."""
    image_right = location.startswith("left")  # patient's left is on the image's right
    x_sign, y_sign = (1 if image_right else -1), (-1 if "upper" in location else 1)
    spread = {"brain": (0.38, 0.42), "lungs": (0.5, 0.35), "liver": (0.45, 0.35)}[organ]
    return x_sign * rng.uniform(0.15, spread[0]), y_sign * rng.uniform(0.12, spread[1])


def _cross_section(xx, yy, rng, modality: str, organ: str) -> np.ndarray:
    gain = rng.uniform(0.85, 1.08)  # scanner/window variation; lesions (0.98) stay the brightest
    t = {k: (v * gain if v is not None else None) for k, v in _TISSUE[modality].items()}
    img = np.full(xx.shape, t["background"])
    u = lambda spread: rng.uniform(-spread, spread)  # noqa: E731  anatomical variation
    ax, ay = {"brain": (0.78, 0.88), "lungs": (0.92, 0.68), "liver": (0.88, 0.72)}[organ]
    ax, ay = ax * rng.uniform(0.9, 1.04), ay * rng.uniform(0.9, 1.04)
    cx, cy = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
    body = _ellipse(xx, yy, cx, cy, ax, ay)
    img[body] = t["body"]
    if t["rim"] is not None:
        img[body & ~_ellipse(xx, yy, cx, cy, ax * 0.93, ay * 0.93)] = t["rim"]
    if organ == "brain":
        img[_ellipse(xx, yy, cx, cy, ax * 0.9, ay * 0.9)] = t["bone"]  # skull
        img[_ellipse(xx, yy, cx, cy, ax * 0.82, ay * 0.82)] = t["tissue"]
        for side in (-1, 1):
            img[_ellipse(xx, yy, cx + side * (0.1 + u(0.03)), cy - 0.05 + u(0.06), 0.06, 0.22 + u(0.06))] = \
                t["fluid"]  # ventricles
    elif organ == "lungs":
        for side in (-1, 1):
            img[_ellipse(xx, yy, cx + side * (0.45 + u(0.05)), cy - 0.05 + u(0.05), 0.33 + u(0.04),
                         0.48 + u(0.06))] = t["air"]
        img[_ellipse(xx, yy, cx - 0.12 + u(0.05), cy + 0.1 + u(0.05), 0.22 + u(0.04), 0.2 + u(0.04))] = \
            t["tissue"]  # heart
        img[_ellipse(xx, yy, cx, cy + ay * 0.75, 0.12, 0.12)] = t["bone"]  # spine
    else:
        img[_ellipse(xx, yy, cx - 0.3 + u(0.08), cy - 0.1 + u(0.08), 0.45 + u(0.07), 0.4 + u(0.07))] = \
            t["tissue"]  # liver on the image's left
        for side in (-1, 1):
            img[_ellipse(xx, yy, cx + side * (0.35 + u(0.05)), cy + 0.35 + u(0.05), 0.12, 0.15)] = \
                t["fluid"]  # kidneys
        img[_ellipse(xx, yy, cx, cy + ay * 0.72, 0.12, 0.12)] = t["bone"]  # spine
    return img


def _projection(xx, yy, rng, organ: str) -> np.ndarray:
    gain = rng.uniform(0.85, 1.0)  # exposure variation; lesions (0.98) stay the brightest
    img = np.full(xx.shape, 0.05)
    cx, cy, scale = rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), rng.uniform(0.82, 1.0)
    if organ == "brain":
        img[_ellipse(xx, yy, cx, cy, 0.85 * scale, 0.95 * scale)] = 0.85  # skull
        img[_ellipse(xx, yy, cx, cy, 0.78 * scale, 0.88 * scale)] = 0.55
        img[_ellipse(xx, yy, cx, cy + 0.55 * scale, 0.5 * scale, 0.25 * scale)] = 0.7  # skull base
        return img * gain
    img[np.abs(xx - cx) < 0.95] = 0.6  # torso fills the frame
    if organ == "lungs":
        ribs = 0.12 * (np.sin(yy * 22 + rng.uniform(0, 6)) > 0.6)
        for side in (-1, 1):
            lung = _ellipse(xx, yy, cx + side * 0.45 * scale, cy - 0.1, 0.32 * scale, 0.7 * scale)
            img[lung] = 0.2 + ribs[lung]
        img[_ellipse(xx, yy, cx - 0.12, cy + 0.35 * scale, 0.28 * scale, 0.25 * scale)] = 0.65  # heart
    else:
        for _ in range(5):  # bowel gas
            img[_ellipse(xx, yy, rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.5), 0.08, 0.06)] = 0.3
    img[np.abs(xx - cx) < 0.09] = 0.82  # spine band
    return img * gain


def render_medical(rng: np.random.Generator, modality: str, organ: str, lesions: list[dict], size: int,
                   *, shift: bool = False) -> Image.Image:
    """Grayscale image; ``lesions``: [{"x", "y", "r"}] in [-1, 1] coordinates."""
    side = size // 2 if shift else size
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    xx, yy = np.meshgrid(coords, coords)
    img = _projection(xx, yy, rng, organ) if modality == "X-ray" else _cross_section(xx, yy, rng, modality, organ)
    for lesion in lesions:
        distance = np.hypot(xx - lesion["x"], yy - lesion["y"])
        edge = 1 / (1 + np.exp((distance - lesion["r"]) / (0.12 * lesion["r"])))
        img = img + (0.98 - img) * edge
    noise = 0.08 if shift else 0.015
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 1)
    if shift:
        img = 1.0 - img ** 0.7  # inverted contrast with a different gamma
    pil = Image.fromarray(np.round(img * 255).astype(np.uint8), "L")
    pil = pil.filter(ImageFilter.GaussianBlur(1.2 if shift else 0.5))
    if shift:
        pil = pil.resize((size, size), Image.Resampling.NEAREST)  # lower resolution, blocky
    return pil


def render_shapes(rng: np.random.Generator, shapes: list[tuple[str, str]], background: str, size: int) -> Image.Image:
    """RGB image of (shape, colour) pairs on a plain background, placed without overlap."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    cells = rng.permutation(4)[: len(shapes)]  # one shape per quadrant, so none overlap
    for (shape, colour), cell in zip(shapes, cells):
        half = size // 2
        r = rng.uniform(0.22, 0.42) * half
        cx = (cell % 2) * half + half / 2 + rng.uniform(-0.2, 0.2) * half
        cy = (cell // 2) * half + half / 2 + rng.uniform(-0.2, 0.2) * half
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return img
