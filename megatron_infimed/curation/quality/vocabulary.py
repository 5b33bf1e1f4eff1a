"""The clinical vocabulary of the medical-relevance dimension: the one reader of its shipped files.

| file (next to this module)         | what it holds                                | source, licence                  |
|------------------------------------|----------------------------------------------|----------------------------------|
| ``clinical_vocabulary.txt``        | clinical words and phrases, under a weight   | ICD-10-CM (public domain), and   |
|                                    |                                              | curated lists of this project    |
| ``clinical_ending_exceptions.txt`` | common English words with a clinical ending  | wordfreq word list, CC BY-SA 4.0 |

``tools/build_clinical_vocabulary.py`` writes both (their headers say how): edit it, not the files.

A term weighs 1.0 when it is specific ("nevus", "endocrine", "CT"), 0.5 when everyday photo captions use
it too ("hand", "chest", "plane"). A word that is not listed weighs 1.0 when it has a clinical ending
(:data:`CLINICAL_ENDINGS`) and is not a common English word with that ending: "cholangiocarcinoma"
counts, "diploma" and "photography" do not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HERE = os.path.dirname(__file__)
VOCABULARY_FILE = os.path.join(HERE, "clinical_vocabulary.txt")
EXCEPTIONS_FILE = os.path.join(HERE, "clinical_ending_exceptions.txt")

# Endings a clinician reads as clinical whatever the stem ("-itis": inflammation, "-ectomy": removal).
CLINICAL_ENDINGS = (
    "itis", "oma", "osis", "oses", "ectomy", "otomy", "ostomy", "plasia", "cyte", "pathy", "emia", "algia",
    "scopy", "graphy", "gram", "megaly", "trophy", "genic", "lysis", "ectasis", "thorax", "plegia", "rrhage",
    "rrhea", "uria",
)
MIN_STEM = 3  # letters before the ending: "coma" and "aroma" are not matched by their ending, "glioma" is
# Plural -> singular endings, English then medical Latin ("diverticula", "glomeruli", "varices").
SINGULARS = (("ies", "y"), ("ses", "sis"), ("ices", "ex"), ("ices", "ix"), ("es", ""), ("s", ""), ("ae", "a"),
             ("i", "us"), ("a", "um"))


def looks_clinical(word: str) -> bool:
    """A clinical ending after a stem, plural "s" allowed: "gastritis", "sarcomas" -> True; "itis" -> False."""
    return any(w.endswith(e) and len(w) - len(e) >= MIN_STEM
               for w in (word, word[:-1] if word.endswith("s") else "") for e in CLINICAL_ENDINGS)


def word_forms(term: str) -> tuple[str, ...]:
    """The term and every singular it may be the plural of.

    Example: "arteries" -> ("arteries", "artery", "arteri", "arterie"); "varices" -> (..., "varix", ...).
    """
    return (term, *(term[: -len(p)] + s for p, s in SINGULARS if term.endswith(p) and len(term) > len(p) + 2))


def normalise_term(text: str) -> str:
    """Lowercase, hyphens as spaces, single spaces: ``"X-Ray "`` -> ``"x ray"``. Both sides of a match use it."""
    return " ".join(text.lower().replace("-", " ").split())


def read_word_file(path: str) -> dict[str, float]:
    """Normalised term -> weight: one term per line, under a ``[weight W]`` line (1.0 before any).

    Example: ``"[weight 0.5]\\nChest"`` -> ``{"chest": 0.5}``. Lines starting with ``#`` are comments.
    """
    weights, weight = {}, 1.0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("[weight "):
                weight = float(line.strip()[len("[weight "):-1])
            elif line.strip() and not line.startswith("#"):
                weights[normalise_term(line)] = weight
    return weights


@dataclass(frozen=True, slots=True)
class ClinicalVocabulary:
    weights: dict[str, float]  # normalised word or phrase -> weight
    exceptions: frozenset[str]  # common English words that merely end like a clinical word

    @classmethod
    def load(cls, terms_file: str | None = None) -> ClinicalVocabulary:
        """The shipped vocabulary, or ``terms_file`` (same format) in its place; the exceptions always ship."""
        return cls(read_word_file(terms_file or VOCABULARY_FILE), frozenset(read_word_file(EXCEPTIONS_FILE)))

    def weight(self, term: str) -> float:
        """Weight of a normalised word or phrase in any of its :func:`word_forms`; 0.0 when not clinical.

        Example: "effusions" -> 1.0 (listed "effusion"); "chest" -> 0.5; "lymphangiomas" -> 1.0 (ending);
        "diploma" -> 0.0 (common English); "left" -> 0.0.
        """
        listed = [self.weights[form] for form in word_forms(term) if form in self.weights]
        if listed:
            return max(listed)
        return 1.0 if " " not in term and term not in self.exceptions and looks_clinical(term) else 0.0
