"""Benchmark contamination guard: training records whose image, and maybe question, is an evaluation item.

Each benchmark is read by evaluation's own reader (``eval.benchmarks.load_benchmark``) with its
scored selection (VQA-RAD: the test split), so the guard checks exactly the items a published
score is computed on. A training record falls in at most one bucket per benchmark:

| bucket                  | an image within ``MAX_HAMMING`` bits of a benchmark image, and | question | drop | flag |
|-------------------------|----------------------------------------------------------------|----------|------|------|
| same_image_and_question | a human turn equal (normalised) to a question asked about it   | drop     | drop | flag |
| same_image              | none of those questions                                        | flag     | drop | flag |

The last three columns are ``--decontaminate-action``; ``question`` is the default.

A drop is the reason ``contamination/<bench>``, placed before any quality reason, so it is the
record's first reason and counted like every other drop. A flag keeps the record and leaves the
match in its progress line (``contamination``), so ``read_outcomes`` can list it later.

**Image match.** The 256-bit difference hash dedup already uses (``dedup.dhash`` of the same
thumbnail ``images.load_image`` makes), so training and benchmark images are hashed alike. The
threshold was chosen on the 315 VQA-RAD images (``tests/curation/test_curation_decontaminate.py``):

| pair (all 315 images)                                             | Hamming distance (of 256 bits) |
|-------------------------------------------------------------------|--------------------------------|
| an image and its JPEG q60, 0.5x, 1.7x, 0.25x or PNG copy          | 0 to 8; 99th percentile 7      |
| an image and its 0.5x-then-JPEG-q60 or JPEG q30 copy              | up to 9 and 12                 |
| two distinct images (49,455 pairs; the closest, two abdominal CTs) | 22 at least, 103 median        |

``MAX_HAMMING = 14`` leaves 6 bits above the worst copy of the first row and 8 below the closest
distinct pair. A 64-bit DCT pHash was measured too and rejected: it put two different abdominal CT
slices 8 bits apart and copies up to 6, no room for a threshold. Not caught: crops, padding (a
letterboxed copy), flips and rotations; a question reworded or wrapped in a prompt template
matches only as same_image.

**Question match.** ``record.normalise_text`` (lower case, punctuation and runs of whitespace to one
space), the dedup key's normaliser: ``"  Is there a PNEUMOTHORAX?"`` equals ``"is there a pneumothorax"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from megatron_infimed.curation.dedup import dhash
from megatron_infimed.curation.images import ImageLoadError, LoadedImage, load_image
from megatron_infimed.curation.record import normalise_text
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.eval.benchmarks import BENCHMARKS, load_benchmark

MAX_HAMMING = 14  # bits of 256; chosen on VQA-RAD, see the module docstring
HASH_NAME = "dhash-256"
BUCKETS = ("same_image_and_question", "same_image")
Action = Literal["question", "drop", "flag"]
# --decontaminate-action -> what each bucket does
ACTIONS: dict[str, dict[str, str]] = {
    "question": {"same_image_and_question": "drop", "same_image": "flag"},
    "drop": {"same_image_and_question": "drop", "same_image": "drop"},
    "flag": {"same_image_and_question": "flag", "same_image": "flag"},
}
EXAMPLES = 5  # record ids shown per bucket in the report


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchmarkSpec:
    name: str  # a key of eval.benchmarks.BENCHMARKS, also the report key and the drop reason's suffix
    data: str  # the benchmark file, as infimed-eval reads it


def parse_benchmark_spec(text: str) -> BenchmarkSpec:
    """``"vqa_rad=/data/VQA_RAD_Dataset_Public.json"`` -> BenchmarkSpec; a bad spec raises ValueError naming it."""
    name, sep, data = text.partition("=")
    if not sep or not name.strip() or not data.strip():
        raise ValueError(f"benchmark spec {text!r} should be BENCH=PATH, e.g. vqa_rad=VQA_RAD_Dataset_Public.json")
    if name.strip() not in BENCHMARKS:
        raise ValueError(f"benchmark spec {text!r}: unknown benchmark {name.strip()!r}; "
                         f"expected one of {sorted(BENCHMARKS)}")
    return BenchmarkSpec(name=name.strip(), data=data.strip())


def image_hash(image: LoadedImage) -> int:
    """The 256-bit dHash of an image's grayscale thumbnail (dedup's near-duplicate hash)."""
    return dhash(image.gray)


def _hash_words(hash_value: int) -> np.ndarray:
    """A 256-bit hash as four uint64 words: its distances to a whole benchmark are one ``bitwise_count``
    (about 2 ms per image against 100,000 benchmark images)."""
    return np.frombuffer(hash_value.to_bytes(32, "big"), dtype=">u8").astype(np.uint64)


def record_questions(conversations: list[dict]) -> set[str]:
    """The normalised human turns of a conversation, image placeholders removed."""
    return {normalise_text(t["value"].replace(IMAGE_PLACEHOLDER, "")) for t in conversations if t["from"] == "human"}


@dataclass(frozen=True, slots=True)
class BenchmarkImages:
    """One benchmark, indexed by image: hash, name, and the questions asked about it."""

    spec: BenchmarkSpec
    items: int  # questions read
    names: list[str]  # image paths relative to the benchmark file's folder: "images/synpic100.jpg"
    hashes: np.ndarray  # uint64 [len(names), 4]: each image's dHash
    questions: list[dict[str, list[str]]]  # per image: normalised question -> benchmark item ids
    unreadable: dict[str, str]  # image name -> load reason; evaluation skips these items too
    without_image: int  # text-only items: nothing to match

    @classmethod
    def load(cls, spec: BenchmarkSpec, max_pixels: int) -> BenchmarkImages:
        # check_images=False: every image is decoded here anyway, to hash it; one that fails to
        # load is reported as unreadable, and evaluation skips its questions as well.
        questions = load_benchmark(spec.name, spec.data, check_images=False)
        # Absolute, not resolved: a benchmark reached through a symlink keeps names relative to it.
        folder = Path(os.path.abspath(spec.data)).parent
        by_image: dict[Path, dict[str, list[str]]] = {}
        for q in questions:
            if q.image is not None:
                by_image.setdefault(q.image, {}).setdefault(normalise_text(q.question), []).append(q.id)
        names, hashes, asked, unreadable = [], [], [], {}
        for path, image_questions in by_image.items():
            name = os.path.relpath(os.path.abspath(path), folder)
            try:
                hashes.append(_hash_words(image_hash(load_image(str(path), max_pixels=max_pixels))))
            except ImageLoadError as exc:
                unreadable[name] = exc.reason
                continue
            names.append(name)
            asked.append(image_questions)
        if unreadable and not names:  # a guard that can compare nothing must not pass for a clean result
            first = next(iter(unreadable.items()))
            raise ValueError(f"benchmark {spec.name} ({spec.data}): none of its {len(unreadable)} images could be "
                             f"read (first: {first[0]}: {first[1]}); expected them next to the file, as "
                             "infimed-eval finds them")
        return cls(spec, len(questions), names, np.array(hashes, dtype=np.uint64).reshape(-1, 4), asked, unreadable,
                   sum(q.image is None for q in questions))

    def match(self, hashes: list[np.ndarray], questions: set[str]) -> dict | None:
        """The record's bucket against this benchmark, with the benchmark images and items it hit, or None."""
        near: dict[int, int] = {}  # benchmark image -> smallest distance to any of the record's images
        for record_hash in hashes:
            distances = np.bitwise_count(self.hashes ^ record_hash).sum(axis=1)
            for j in np.flatnonzero(distances <= MAX_HAMMING).tolist():
                near[j] = min(near.get(j, 256), int(distances[j]))
        if not near:
            return None
        hit = sorted(near, key=lambda j: (near[j], self.names[j]))
        asked = sorted({qid for j in hit for text, ids in self.questions[j].items() if text in questions
                        for qid in ids})
        # bench_items: the items whose question matched, else every item asked about the matched images
        shown = asked or sorted({qid for j in hit for ids in self.questions[j].values() for qid in ids})
        return {"match": BUCKETS[0] if asked else BUCKETS[1], "bench_images": [self.names[j] for j in hit],
                "bench_items": shown, "distance": near[hit[0]]}

    def fingerprint(self) -> dict:
        """What a resumed run must share: the file, and a digest of what was read from it."""
        digest = hashlib.sha256(self.hashes.tobytes())
        digest.update(json.dumps([self.names, self.questions, self.unreadable], sort_keys=True).encode())
        return {"name": self.spec.name, "data": self.spec.data, "items": self.items, "digest": digest.hexdigest()}


@dataclass(frozen=True, slots=True)
class ContaminationGuard:
    """The benchmarks of ``--decontaminate`` and what ``--decontaminate-action`` does with a match.

    >>> guard = ContaminationGuard.load([parse_benchmark_spec("vqa_rad=VQA_RAD_Dataset_Public.json")], "question",
    ...                                 max_pixels=64_000_000)
    >>> guard.check(record.conversations, images)  # VQA-RAD train qid 422: "Where is the lesion located?"
    {'vqa_rad': {'match': 'same_image_and_question', 'bench_images': ['images/synpic31955.jpg'],
                 'bench_items': ['447'], 'distance': 0, 'action': 'drop'}}
    """

    benchmarks: list[BenchmarkImages]
    action: Action

    @classmethod
    def load(cls, specs: list[BenchmarkSpec] | tuple[BenchmarkSpec, ...], action: Action, *,
             max_pixels: int) -> ContaminationGuard:
        if action not in ACTIONS:
            raise ValueError(f"--decontaminate-action {action!r} is not one of {sorted(ACTIONS)}")
        names = [spec.name for spec in specs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"--decontaminate names benchmark(s) {repeated} more than once; give each one once")
        return cls([BenchmarkImages.load(spec, max_pixels) for spec in specs], action)

    def check(self, conversations: list[dict], images: list[LoadedImage]) -> dict:
        """bench -> match (bucket, action, benchmark images and items hit, distance) for each benchmark hit."""
        hashes = [_hash_words(image_hash(image)) for image in images]
        questions = record_questions(conversations)
        found = {}
        for bench in self.benchmarks:
            match = bench.match(hashes, questions)
            if match:
                found[bench.spec.name] = {**match, "action": ACTIONS[self.action][match["match"]]}
        return found

    def drop_reasons(self, line: dict) -> list[str]:
        """``contamination/<bench>`` for each benchmark whose match the action drops, in ``--decontaminate`` order."""
        found = line.get("contamination", {})
        return [f"contamination/{bench.spec.name}" for bench in self.benchmarks
                if found.get(bench.spec.name, {}).get("action") == "drop"]

    def fingerprint(self) -> dict:
        return {"action": self.action, "max_hamming": MAX_HAMMING, "hash": HASH_NAME,
                "benchmarks": [bench.fingerprint() for bench in self.benchmarks]}

    def summary(self, lines: list[dict]) -> dict:
        """quality_report.json's ``contamination``: per benchmark, records per bucket, what was done, examples.

        Counts are of records, whatever else happened to them: ``dropped`` counts every record with
        the reason ``contamination/<bench>`` (first or not), ``flagged`` every match the action keeps
        (a quality reason may still drop it). ``checked``: records whose images loaded, so were compared.
        """
        checked = sum(1 for line in lines if "scores" in line)
        report = {}
        for bench in self.benchmarks:
            name = bench.spec.name
            hits = [(line["id"], line["contamination"][name]) for line in lines
                    if name in line.get("contamination", {})]
            report[name] = {
                **{bucket: sum(m["match"] == bucket for _, m in hits) for bucket in BUCKETS},
                "dropped": sum(m["action"] == "drop" for _, m in hits),
                "flagged": sum(m["action"] == "flag" for _, m in hits),
                "checked": checked,
                "action": dict(ACTIONS[self.action]),
                "hash": HASH_NAME,
                "max_hamming": MAX_HAMMING,
                "examples": {bucket: [{"id": rid, **{k: m[k] for k in ("bench_images", "bench_items", "distance")}}
                                      for rid, m in hits if m["match"] == bucket][:EXAMPLES] for bucket in BUCKETS},
                "benchmark": {"data": bench.spec.data, "items": bench.items, "images": len(bench.names),
                              "unreadable_images": dict(sorted(bench.unreadable.items())),
                              "items_without_image": bench.without_image},
            }
        return report
