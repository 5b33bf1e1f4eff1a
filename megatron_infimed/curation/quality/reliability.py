"""Answer reliability and safety: answers fit their questions, turns agree, no identifying data.

| issue                 | test                                                                        | score |
|-----------------------|-----------------------------------------------------------------------------|-------|
| phi_<kind>            | names after a title or "patient name", record numbers (MRN), phone numbers, | 0.0   |
|                       | e-mail, SSN, exact dates                                                    |       |
| yes_no_mismatch       | a yes/no-form question ("Is ...?", no " or ") not answered yes/no           | 0.2   |
| answer_not_in_options | a question listing options "A) .. B) .." answered with none of them         | 0.2   |
| contradiction         | the same question asked twice in a conversation, answered differently       | 0.2   |

Identifying information is flagged for removal: the sample is dropped, never rewritten.
"""

from __future__ import annotations

import re

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore, penalties_to_score
from megatron_infimed.curation.quality.consistency import is_yes_no_answer
from megatron_infimed.curation.record import Record, conversation_text, normalise_text, qa_pairs

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
PHI_PATTERNS = {
    "name": re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr)\.? [A-Z][a-z]+|"
                       r"\b(?:[Pp]atient|[Pp]t)(?:'s)? [Nn]ame(?: is|:)\s*[A-Z]"),
    "record_number": re.compile(r"\b(?:mrn|medical record(?: number)?|record (?:no|number)|patient id|accession"
                                r"(?: number)?)\b\W{0,3}#?\s*[A-Z0-9-]{4,}", re.I),
    "phone": re.compile(r"(?<!\d)(?:\+?\d{1,2}[\s.-])?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\d)"),
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[A-Za-z]{2,}\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "date": re.compile(rf"\b\d{{1,2}}[/-]\d{{1,2}}[/-]\d{{2,4}}\b|\b\d{{4}}-\d{{2}}-\d{{2}}\b|"
                       rf"\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b", re.I),
}
_YES_NO_QUESTION = re.compile(r"^(is|are|does|do|did|was|were|can|could|has|have|had|will|would|should)\b", re.I)
_OPTION = re.compile(r"(?:^|\s|\()([A-F])[\).:]\s*(.+?)(?=\s+\(?[A-F][\).:]\s|\s*$)")


def find_phi(text: str) -> list[str]:
    """Kinds of identifying information present, e.g. "Call 555-123-4567" -> ["phone"]."""
    return [kind for kind, pattern in PHI_PATTERNS.items() if pattern.search(text)]


def is_yes_no_question(question: str) -> bool:
    """"Is there a lesion?" -> True; "Is it CT or MRI?", "Can you name the organ?" -> False."""
    last_line = question.strip().splitlines()[-1] if question.strip() else ""
    if re.match(r"^(can|could|would) you\b", last_line, re.I):  # a request, not a yes/no question
        return False
    return bool(_YES_NO_QUESTION.match(last_line)) and " or " not in last_line.lower() and not parse_options(question)


def parse_options(question: str) -> dict[str, str]:
    """Options after "Options:" (or any "A) .. B) .." list): {"A": "ct", "B": "mri"} (normalised)."""
    _, sep, tail = question.rpartition("Options:")
    text = tail if sep else question
    options = {m.group(1): normalise_text(m.group(2)) for m in _OPTION.finditer(text.strip())}
    return options if len(options) >= 2 else {}


def answer_in_options(answer: str, options: dict[str, str]) -> bool:
    """"B", "B) MRI", "mri" all select option B = "mri"."""
    text = answer.strip()
    letter = re.match(r"^\(?([A-F])(?:[\).:]|$)", text)
    if letter and letter.group(1) in options:
        return True
    return normalise_text(text) in options.values()


class ReliabilityScorer:
    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        penalties: dict[str, float] = {}
        for kind in find_phi(conversation_text(record.conversations)):
            penalties[f"phi_{kind}"] = 0.0
        seen: dict[str, str] = {}
        for question, answer in qa_pairs(record.conversations):
            options = parse_options(question)
            if options and not answer_in_options(answer, options):
                penalties["answer_not_in_options"] = 0.2
            elif is_yes_no_question(question) and not is_yes_no_answer(answer):
                penalties["yes_no_mismatch"] = 0.2
            key = normalise_text(question)
            if key in seen and seen[key] != normalise_text(answer):
                penalties["contradiction"] = 0.2
            seen.setdefault(key, normalise_text(answer))
        return penalties_to_score(penalties)
