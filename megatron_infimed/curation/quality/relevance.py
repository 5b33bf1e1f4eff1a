"""Medical relevance: density of clinical vocabulary (the shipped ``clinical_terms.txt``).

Rubric (whole conversation, placeholders removed):

| text              | score                                             |
|-------------------|---------------------------------------------------|
| <= 40 words       | 0 terms: 0.0, 1 term: 0.5, 2+ terms: 1.0          |
| > 40 words        | min(1, (terms / words) / ``min_density``)          |

Terms match whole words or phrases, case-insensitively, with a plural ``s``/``es`` accepted;
words with a clinical ending (-itis, -oma, -megaly, ...) count too.
With the default threshold 0.5 a short VQA turn needs one clinical word ("lesion", "CT", "axial").
"""

from __future__ import annotations

import os
import re

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore
from megatron_infimed.curation.record import Record, conversation_text

DEFAULT_TERMS_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "clinical_terms.txt")
_WORD = re.compile(r"[a-z0-9&]+")
# Word endings that are clinical by construction ("appendicitis", "lymphoma", "splenomegaly").
_CLINICAL_SUFFIXES = ("itis", "oma", "omas", "osis", "ectomy", "otomy", "ostomy", "megaly", "pathy", "plasia",
                      "emia", "algia", "graphy", "scopy", "ectasis", "thorax")


def load_terms(path: str = DEFAULT_TERMS_FILE) -> frozenset[str]:
    with open(path, encoding="utf-8") as f:
        # Hyphens are spaces on both sides, so "x-ray", "x ray" and "X-Ray" all match.
        return frozenset(" ".join(line.lower().replace("-", " ").split()) for line in f
                         if line.strip() and not line.startswith("#"))


class TermMatcher:
    """Counts clinical term occurrences; the longest phrase wins at each position."""

    def __init__(self, terms: frozenset[str]):
        self.terms = terms
        self.max_words = max(len(t.split()) for t in terms)

    def _known(self, phrase: str) -> bool:
        if " " not in phrase and len(phrase) > 5 and phrase.endswith(_CLINICAL_SUFFIXES):
            return True
        return phrase in self.terms or (phrase.endswith("s") and phrase[:-1] in self.terms) or (
            phrase.endswith("es") and phrase[:-2] in self.terms)

    def count(self, text: str) -> tuple[int, int]:
        """(term hits, words). Example: "Is there a pleural effusion?" -> (2, 5)."""
        words = _WORD.findall(text.lower().replace("-", " "))
        hits, i = 0, 0
        while i < len(words):
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                if self._known(" ".join(words[i:i + n])):
                    hits, i = hits + 1, i + n
                    break
            else:
                i += 1
        return hits, len(words)


class RelevanceScorer:
    def __init__(self, terms_file: str | None = None, long_text_words: int = 40, min_density: float = 0.05):
        self.matcher = TermMatcher(load_terms(terms_file or DEFAULT_TERMS_FILE))
        self.long_text_words = long_text_words
        self.min_density = min_density

    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        hits, words = self.matcher.count(conversation_text(record.conversations))
        if words > self.long_text_words:
            value = min(1.0, hits / words / self.min_density)
        else:
            value = min(1.0, hits / 2)
        if value >= 1.0:
            return DimensionScore(1.0)
        return DimensionScore(value, ("no_clinical_terms",) if hits == 0 else ("few_clinical_terms",))
