"""Deterministic synthetic medical (and general) VQA data with injected, labelled defects.

``generate_synthetic(out_dir, n, distribution, seed)`` writes::

    out_dir/<distribution>_<split>.json           LLaVA-style records (infimed-prepare --format llava)
    out_dir/images/<distribution>_<split>/*.png   one PNG per record
    out_dir/<distribution>_<split>.defects.json   {id: "<dimension>/<kind>"} ground truth

| distribution | images                                                | text                     |
|--------------|-------------------------------------------------------|--------------------------|
| general      | coloured circles/squares/triangles on plain backgrounds | shape questions, no clinical words |
| medical      | CT / MRI / X-ray of brain, lungs, liver, 0-3 lesions  | see questions.py         |
| shifted      | the same anatomy, inverted, noisier, blurred, half resolution | the same questions |

Every sample draws from its own generator seeded by (seed, distribution, split, index), so a
sample does not change when ``n`` grows. Each record's metadata carries the truth (modality,
organ, lesion count/location/sizes, answer type) and ``defect`` (null for clean samples).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass

import numpy as np

from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.demo.synthetic import questions as q
from megatron_infimed.demo.synthetic.defects import damage_image, damage_text, defects_for
from megatron_infimed.demo.synthetic.render import (
    BACKGROUNDS,
    COLOURS,
    LOCATIONS,
    MODALITIES,
    ORGANS,
    SHAPES,
    lesion_centre,
    render_medical,
    render_shapes,
)

DISTRIBUTIONS = ("general", "medical", "shifted")


@dataclass(frozen=True, slots=True)
class SyntheticDataset:
    json_path: str
    image_root: str  # what --image-root should be (the record paths are relative to it)
    defects: dict[str, str]  # sample id -> "<dimension>/<kind>"
    n: int


class _Balance:
    """Alternates yes/no per question family: exactly balanced over every two questions."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def next_yes(self, family: str) -> bool:
        count = self.counts.get(family, 0)
        self.counts[family] = count + 1
        return count % 2 == 0


def _place_lesions(rng, organ: str, count: int, location: str) -> list[dict]:
    lesions: list[dict] = []
    for _ in range(count):
        for _attempt in range(30):  # keep lesions apart so they can be counted
            x, y = lesion_centre(rng, organ, location)
            # Radius 0.12-0.17 of the half-width: at least ~8 px across at the 64 px demo size.
            r = float(rng.uniform(0.12, 0.17))
            if all(np.hypot(x - o["x"], y - o["y"]) > r + o["r"] + 0.04 for o in lesions):
                break
        lesions.append({"x": round(float(x), 4), "y": round(float(y), 4), "r": round(r, 4)})
    return lesions


def _medical_sample(rng, qtype: str, balance: _Balance, size: int, shift: bool):
    modality = MODALITIES[int(rng.integers(3))]
    organ = list(ORGANS)[int(rng.integers(3))]
    present = bool(rng.random() < 0.5)
    family = ("lesion", "modality")[int(rng.integers(2))] if qtype == "closed" else \
        ("modality", "organ", "location", "count")[int(rng.integers(4))] if qtype == "open" else \
        ("modality", "organ")[int(rng.integers(2))]
    if qtype == "closed" and family == "lesion":
        present = balance.next_yes("lesion")
    if qtype == "open" and family == "location":
        present = True
    count = int(rng.integers(1, 4)) if present else 0
    location = LOCATIONS[int(rng.integers(4))]
    lesions = _place_lesions(rng, organ, count, location)
    image = render_medical(rng, modality, organ, lesions, size, shift=shift)
    if qtype == "closed":
        if family == "lesion":
            question, answer = q.LESION_QUESTION, "yes" if present else "no"
        else:
            yes = balance.next_yes("modality")
            asked = modality if yes else [m for m in MODALITIES if m != modality][int(rng.integers(2))]
            question, answer = q.MODALITY_QUESTIONS[asked], "yes" if yes else "no"
    elif qtype == "open":
        question = q.OPEN_QUESTIONS[family]
        answer = {"modality": modality, "organ": organ, "location": location, "count": str(count)}[family]
    elif qtype == "mc":
        question, answer = q.medical_mc(family), modality if family == "modality" else organ
    else:
        question, answer = q.CAPTION_PROMPT, q.medical_caption(modality, organ, count, location)
    metadata = {"modality": modality, "organ": organ, "region": ORGANS[organ], "lesion_count": count,
                "lesion_location": location if count else None, "lesions": lesions}
    return image, question, answer, metadata, family


def _general_sample(rng, qtype: str, balance: _Balance, size: int):
    k = 1 if qtype == "mc" else int(rng.integers(1, 4))
    if qtype == "closed":
        with_circle = balance.next_yes("circle")
        pool = [s for s in SHAPES if s != "circle"]
        kinds = (["circle"] if with_circle else []) + list(rng.permutation(pool)[: k - 1 if with_circle else min(k, 2)])
    else:
        kinds = list(rng.permutation(SHAPES)[:k])
    colours = list(rng.permutation(list(COLOURS))[: len(kinds)])
    shapes = [(str(s), str(c)) for s, c in zip(kinds, colours)]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    image = render_shapes(rng, shapes, background, size)
    family = "shapes"
    if qtype == "closed":
        question, answer, family = q.CIRCLE_QUESTION, "yes" if "circle" in kinds else "no", "circle"
    elif qtype == "open":
        if rng.random() < 0.5:
            question, answer, family = "How many shapes are there?", str(len(shapes)), "count"
        else:
            shape, colour = shapes[int(rng.integers(len(shapes)))]
            question, answer, family = f"What colour is the {shape}?", colour, "colour"
    elif qtype == "mc":
        question, answer = q.shapes_mc(), shapes[0][0]
    else:
        question, answer = q.CAPTION_PROMPT, q.shapes_caption(shapes, background)
    return image, question, answer, {"shapes": [list(s) for s in shapes], "background": background}, family


def generate_synthetic(out_dir: str, n: int, distribution: str = "medical", seed: int = 0, *, image_size: int = 128,
                       defect_rate: float = 0.0, split: str = "train") -> SyntheticDataset:
    """Write ``n`` records (see the module docstring); ``defect_rate`` of them carry one defect."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution {distribution!r} unknown; expected one of {DISTRIBUTIONS}")
    if not 0.0 <= defect_rate <= 1.0 or n < 0 or image_size < 32:
        raise ValueError(f"need n >= 0, 0 <= defect_rate <= 1, image_size >= 32; got {n}, {defect_rate}, {image_size}")
    name = f"{distribution}_{split}"
    image_dir = os.path.join(out_dir, "images", name)
    os.makedirs(image_dir, exist_ok=True)
    stream = [seed, DISTRIBUTIONS.index(distribution), zlib.crc32(split.encode())]
    master = np.random.default_rng(stream)
    kinds = defects_for(distribution)
    chosen = sorted(master.choice(n, size=round(n * defect_rate), replace=False).tolist()) if n else []
    labels = {index: kinds[j % len(kinds)] for j, index in enumerate(chosen)}
    balance = _Balance()
    records, defects, clean = [], {}, []
    for index in range(n):
        rng = np.random.default_rng(stream + [index])
        sample_id = f"{name}-{index:06d}"
        label, forced_qtype = labels.get(index, (None, None))
        image_path = os.path.join(image_dir, f"{sample_id}.png")
        if label and label.startswith("duplicate/") and clean:
            source = records[clean[int(rng.integers(len(clean)))]]
            record = json.loads(json.dumps(source))
            record.update(id=sample_id, image=os.path.relpath(image_path, out_dir))
            record["metadata"]["defect"] = label
            if label == "duplicate/exact":
                shutil.copyfile(os.path.join(out_dir, source["image"]), image_path)
            else:
                from PIL import Image

                with Image.open(os.path.join(out_dir, source["image"])) as original:
                    damage_image(label, original.copy(), rng).save(image_path, format="PNG")
            records.append(record)
            defects[sample_id] = label
            continue
        if label and label.startswith("duplicate/"):
            label = None  # nothing earlier to copy yet
        qtype = forced_qtype or q.QUESTION_TYPES[int(rng.choice(4, p=q.QUESTION_TYPE_P))]
        if distribution == "general":
            image, question, answer, metadata, family = _general_sample(rng, qtype, balance, image_size)
        else:
            image, question, answer, metadata, family = _medical_sample(
                rng, qtype, balance, image_size, shift=distribution == "shifted")
        metadata.update(distribution=distribution, split=split, question_type=qtype, question_family=family,
                        answer_type="OPEN" if qtype in ("open", "caption") else "CLOSED", defect=label)
        if qtype == "caption":
            metadata["answer_type"] = None
        placeholders = 1
        if label:
            image = damage_image(label, image, rng)
            question, answer, placeholders = damage_text(label, question, answer, metadata, rng)
            defects[sample_id] = label
        else:
            clean.append(index)
        image.save(image_path, format="PNG")
        human = f"{IMAGE_PLACEHOLDER}\n" * placeholders + question
        records.append({"id": sample_id, "image": os.path.relpath(image_path, out_dir),
                        "source": f"synthetic-{distribution}", "metadata": metadata,
                        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]})
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
    with open(os.path.join(out_dir, f"{name}.defects.json"), "w", encoding="utf-8") as f:
        json.dump(defects, f, indent=1, sort_keys=True)
    return SyntheticDataset(json_path, out_dir, defects, n)
