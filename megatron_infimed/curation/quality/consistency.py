"""Image-text consistency rules: placeholders match images, words agree with known metadata.

| issue                | test                                                                              | score |
|----------------------|-----------------------------------------------------------------------------------|-------|
| placeholder_mismatch | number of ``<image>`` in human turns != number of images, or one in an answer     | 0.0   |
| modality_mismatch    | metadata ``modality`` known; the answers name other modalities, never it          | 0.2   |
| organ_mismatch       | a caption (``question_type`` caption) names other body regions than the metadata  | 0.3   |
|                      | ``organ``, never it                                                               |       |
| answer_type_mismatch | metadata ``answer_type`` CLOSED but the answer has more than 10 words, or a       | 0.4   |
|                      | yes/no-form question's answer is yes/no while it is labelled OPEN and has no "or" |       |

Only answers (gpt turns) are checked against metadata: a question may legitimately name a
modality or organ that is not in the image ("Is this an MRI?" -> "No").
"""

from __future__ import annotations

import re

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore, penalties_to_score
from megatron_infimed.curation.record import Record, qa_pairs
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER

MODALITY_WORDS = {
    "ct": r"\bct\b|\bcta\b|computed tomography",
    "mri": r"\bmri\b|\bmr\b|magnetic resonance|\bt[12]\b|t[12]-weighted|\bflair\b",
    "xray": r"\bx-?rays?\b|\bradiograph",
    "ultrasound": r"\bultrasound\b|\bsonograph|\bdoppler\b",
}
REGION_WORDS = {
    "head": r"\bbrain\b|\bskull\b|\bcerebr|\bcerebell|\bhead\b|\bventricles?\b|\bcranial\b",
    "chest": r"\blungs?\b|\bchest\b|\bheart\b|\bpleura|\bmediastin|\bthora|\bcardiac\b|\bpulmonary\b",
    "abdomen": r"\bliver\b|\babdom|\bkidneys?\b|\bspleen\b|\bpancrea|\bbowel\b|\bgallbladder\b|\brenal\b|\bpelvi",
}
_YES_NO_START = re.compile(r"^(is|are|does|do|did|was|were|can|could|has|have|had|will|would|should)\b", re.I)


def normalise_modality(value: object) -> str | None:
    """Metadata spellings -> the keys of MODALITY_WORDS: "X-Ray" -> "xray", "MR" -> "mri"."""
    text = str(value or "").lower().replace("-", "").replace(" ", "")
    aliases = {"ct": "ct", "mri": "mri", "mr": "mri", "xray": "xray", "cr": "xray", "dx": "xray",
               "us": "ultrasound", "ultrasound": "ultrasound"}
    return aliases.get(text)


def normalise_region(value: object) -> str | None:
    """Organ/location metadata -> "head" | "chest" | "abdomen" (SLAKE "Chest_lung" -> "chest")."""
    text = str(value or "").lower()
    for region, words in (("head", ("brain", "head", "neck", "skull")), ("chest", ("chest", "lung", "heart")),
                          ("abdomen", ("abd", "liver", "kidney", "pelvi", "abdomen"))):
        if any(w in text for w in words):
            return region
    return None


def _mentions(text: str, table: dict[str, str]) -> set[str]:
    return {key for key, pattern in table.items() if re.search(pattern, text, re.I)}


def is_yes_no_answer(answer: str) -> bool:
    return re.sub(r"[^\w\s]", "", answer).strip().lower().split()[:1] in (["yes"], ["no"])


class ConsistencyScorer:
    def __init__(self, max_closed_answer_words: int = 10):
        self.max_closed_answer_words = max_closed_answer_words

    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        penalties: dict[str, float] = {}
        human = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in record.conversations if t["from"] == "human")
        other = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in record.conversations if t["from"] != "human")
        if human != len(record.image_paths) or other:
            penalties["placeholder_mismatch"] = 0.0
        answers = " ".join(t["value"] for t in record.conversations if t["from"] == "gpt")
        modality = normalise_modality(record.metadata.get("modality"))
        named = _mentions(answers, MODALITY_WORDS)
        if modality and named and modality not in named:
            penalties["modality_mismatch"] = 0.2
        # Organ labels are coarse (a chest CT shows the liver): only a description must agree.
        region = normalise_region(record.metadata.get("organ"))
        named = _mentions(answers, REGION_WORDS)
        if record.metadata.get("question_type") == "caption" and region and named and region not in named:
            penalties["organ_mismatch"] = 0.3
        answer_type = str(record.metadata.get("answer_type") or "").upper()
        for question, answer in qa_pairs(record.conversations):
            too_long = answer_type == "CLOSED" and len(answer.split()) > self.max_closed_answer_words
            open_yes_no = (answer_type == "OPEN" and is_yes_no_answer(answer) and _YES_NO_START.match(question)
                           and " or " not in question.lower())
            if too_long or open_yes_no:
                penalties["answer_type_mismatch"] = 0.4
        return penalties_to_score(penalties)
