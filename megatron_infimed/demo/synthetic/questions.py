"""Questions, answers and captions of the synthetic set: few, fixed phrasings.

Closed questions are answerable from one visual cue and alternate yes/no per question family,
so every distribution is balanced (about 50 % yes):

| distribution      | closed questions (yes/no)                                  |
|-------------------|------------------------------------------------------------|
| medical, shifted  | "Is there a lesion in this image?", "Is this a CT scan?" / |
|                   | "Is this an MRI scan?" / "Is this an X-ray image?"         |
| general           | "Is there a circle in this image?"                         |

Open: modality, organ, lesion location ("left upper", patient orientation), lesion count (digits);
multiple choice lists "Options: A) .. B) .. C) .." and is answered with the option's text;
captions answer "Describe this image.".
"""

from __future__ import annotations

from megatron_infimed.demo.synthetic.render import MODALITIES, ORGANS, SHAPES

QUESTION_TYPES = ("closed", "open", "mc", "caption")
QUESTION_TYPE_P = (0.5, 0.25, 0.1, 0.15)
LESION_QUESTION = "Is there a lesion in this image?"
MODALITY_QUESTIONS = {"CT": "Is this a CT scan?", "MRI": "Is this an MRI scan?", "X-ray": "Is this an X-ray image?"}
CIRCLE_QUESTION = "Is there a circle in this image?"
CAPTION_PROMPT = "Describe this image."
OPEN_QUESTIONS = {
    "modality": "What imaging modality is this?",
    "organ": "Which organ is shown in this image?",
    "location": "Where is the lesion located?",
    "count": "How many lesions are there?",
}


def options_text(options: tuple[str, ...]) -> str:
    return "Options: " + " ".join(f"{chr(65 + i)}) {o}" for i, o in enumerate(options))


def medical_mc(family: str) -> str:
    if family == "modality":
        return f"Which imaging modality is this? {options_text(MODALITIES)}"
    return f"Which organ is shown in this image? {options_text(tuple(ORGANS))}"


def shapes_mc() -> str:
    return f"Which shape is in this image? {options_text(SHAPES)}"


def medical_caption(modality: str, organ: str, count: int, location: str) -> str:
    plane = "Frontal" if modality == "X-ray" else "Axial"
    region = ORGANS[organ]
    if count == 0:
        return f"{plane} {modality} of the {region} with no lesion."
    noun = "lesion" if count == 1 else "lesions"
    return f"{plane} {modality} of the {region} showing {count} {noun} in the {location} region."


def shapes_caption(shapes: list[tuple[str, str]], background: str) -> str:
    parts = [f"a {colour} {shape}" for shape, colour in shapes]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed[0].upper()}{listed[1:]} on a {background} background."
