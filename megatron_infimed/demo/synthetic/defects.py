"""Injected defects, one kind per quality dimension (plus duplicates), with ground-truth labels.

Each defect is built to trip exactly its own dimension, so per-dimension precision and recall of
the filter can be measured (label = ``"<dimension>/<kind>"``):

| label                                         | what is changed                                   |
|-----------------------------------------------|---------------------------------------------------|
| image_quality/blank, /tiny, /extreme_aspect   | constant image; 12 x 12; 224 x 32                  |
| text_quality/repetition, /garbled, /markup, /truncated | caption x6; mojibake; HTML; cut after "of the" |
| image_text_consistency/placeholder_mismatch   | two or zero ``<image>`` for one image             |
| image_text_consistency/modality_mismatch      | caption names another modality than the metadata  |
| medical_relevance/off_topic (not in general)  | an everyday question and answer                   |
| answer_reliability/yes_no_mismatch            | a yes/no question answered "possibly"             |
| answer_reliability/phi                        | a caption with a name, record number, phone, date  |
| answer_reliability/answer_not_in_options      | a multiple-choice answer outside the options      |
| duplicate/exact, duplicate/near               | an earlier clean sample copied; resized to 95 %   |
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from megatron_infimed.demo.synthetic.render import MODALITIES

# (label, question type the sample must have, or None for any)
DEFECTS = (
    ("image_quality/blank", None),
    ("image_quality/tiny", None),
    ("image_quality/extreme_aspect", None),
    ("text_quality/repetition", "caption"),
    ("text_quality/garbled", "caption"),
    ("text_quality/markup", "caption"),
    ("text_quality/truncated", "caption"),
    ("image_text_consistency/placeholder_mismatch", None),
    ("image_text_consistency/modality_mismatch", "caption"),
    ("medical_relevance/off_topic", None),
    ("answer_reliability/yes_no_mismatch", "closed"),
    ("answer_reliability/phi", "caption"),
    ("answer_reliability/answer_not_in_options", "mc"),
    ("duplicate/exact", None),
    ("duplicate/near", None),
)
MEDICAL_ONLY = {"image_text_consistency/modality_mismatch", "medical_relevance/off_topic"}
OFF_TOPIC = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote it."),
    ("Can you suggest a quick pasta recipe?", "Boil the pasta and add tomato sauce with basil."),
    ("What is the weather like today?", "It is sunny and warm outside."),
)
PHI = (
    "Patient name: John Smith, phone 555-123-4567.",
    "MRN 4839201, examined on 03/14/2021.",
    "Seen by Dr. Alvarez, contact maria.lopez@example.com.",
    "Mr. Brown, record number A-99812, born March 3, 1961.",
)


def defects_for(distribution: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(d for d in DEFECTS if distribution != "general" or d[0] not in MEDICAL_ONLY)


def damage_image(label: str, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if label == "image_quality/blank":
        return Image.new(image.mode, image.size, (int(rng.integers(0, 256)),) * len(image.getbands()))
    if label == "image_quality/tiny":
        return image.resize((12, 12), Image.Resampling.BILINEAR)
    if label == "image_quality/extreme_aspect":
        return image.resize((224, 32), Image.Resampling.BILINEAR)
    if label == "duplicate/near":
        side = round(image.width * 0.95)
        return image.resize((side, side), Image.Resampling.BICUBIC)
    return image


def damage_text(label: str, question: str, answer: str, metadata: dict, rng: np.random.Generator
                ) -> tuple[str, str, int]:
    """(question, answer, number of <image> placeholders) after the text defect ``label``."""
    placeholders = 1
    if label == "text_quality/repetition":
        answer = " ".join([answer] * 6)
    elif label == "text_quality/garbled":
        answer = answer.replace("e", "Ã©") + " \ufffd\ufffd"
    elif label == "text_quality/markup":
        answer = f'<div class="caption">{answer}</div>&nbsp;'
    elif label == "text_quality/truncated":
        answer = answer.rstrip(".") + " next to the"
    elif label == "image_text_consistency/placeholder_mismatch":
        placeholders = 2 if rng.random() < 0.5 else 0
    elif label == "image_text_consistency/modality_mismatch":
        wrong = [m for m in MODALITIES if m != metadata["modality"]][int(rng.integers(2))]
        answer = answer.replace(f" {metadata['modality']} ", f" {wrong} ", 1)
    elif label == "medical_relevance/off_topic":
        question, answer = OFF_TOPIC[int(rng.integers(len(OFF_TOPIC)))]
        metadata.update(question_type="open", answer_type="OPEN")
    elif label == "answer_reliability/yes_no_mismatch":
        answer = ("possibly", "hard to say", "unclear")[int(rng.integers(3))]
    elif label == "answer_reliability/phi":
        answer = f"{answer} {PHI[int(rng.integers(len(PHI)))]}"
    elif label == "answer_reliability/answer_not_in_options":
        answer = "kidney" if metadata.get("modality") else "hexagon"
    return question, answer, placeholders
