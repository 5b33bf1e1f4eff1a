"""Clinician review loop: export a stratified sample to CSV, import grades, report agreement.

1. ``export_review_csv``: samples stratified by outcome (kept, or the first drop reason), at least
   one per stratum, the rest proportional; seeded, so the same run exports the same rows.
2. Clinicians fill ``grade_<dimension>`` with 1-5 (blank = not graded) and may add a comment.
3. ``import_review_grades`` maps grades to [0, 1] as (g - 1) / 4, keyed by ``sample_hash`` (content,
   not position, so it survives reordering). A rerun with ``--review-grades`` uses them in place of
   the automatic scores (human grades override) and ``agreement`` reports how the two agreed.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict

from megatron_infimed.curation.quality import DIMENSIONS

GRADE_MIN, GRADE_MAX = 1, 5


def _stratum(line: dict) -> str:
    return line["reasons"][0] if line["reasons"] else "kept"


def stratified_sample(lines: list[dict], n: int, seed: int) -> list[dict]:
    """At least one per stratum (while n allows), the rest proportional to stratum size."""
    strata: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        if line.get("scores"):  # records that never loaded have nothing to grade
            strata[_stratum(line)].append(line)
    rng = random.Random(seed)
    names = sorted(strata)
    n = min(n, sum(len(v) for v in strata.values()))
    quota = {s: 1 if n >= len(names) else 0 for s in names}
    # Fill the rest one at a time, always to the stratum furthest below its proportional share.
    while sum(quota.values()) < n:
        open_strata = [s for s in names if quota[s] < len(strata[s])]
        total = sum(len(strata[s]) for s in open_strata)
        filled = sum(quota[s] for s in open_strata)
        best = max(open_strata, key=lambda s: (len(strata[s]) / total * (filled + 1) - quota[s], s))
        quota[best] += 1
    chosen = []
    for s in names:
        chosen.extend(rng.sample(strata[s], quota[s]))
    return sorted(chosen, key=lambda line: line["key"])


def export_review_csv(lines: list[dict], path: str, n: int, seed: int) -> int:
    rows = stratified_sample(lines, n, seed)
    columns = ["sample_hash", "key", "id", "source", "stratum", "text", "images"]
    columns += [f"auto_{d}" for d in DIMENSIONS] + [f"grade_{d}" for d in DIMENSIONS] + ["comment"]
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for line in rows:
            row = {"sample_hash": line["sample_hash"], "key": line["key"], "id": line["id"], "source": line["source"],
                   "stratum": _stratum(line), "text": line["text"], "images": ";".join(line["image_paths"]),
                   "comment": ""}
            row.update({f"auto_{d}": f"{line['scores'][d]:.3f}" for d in DIMENSIONS if d in line["scores"]})
            row.update({f"grade_{d}": "" for d in DIMENSIONS})
            writer.writerow(row)
    return len(rows)


def import_review_grades(path: str) -> dict[str, dict[str, float]]:
    """sample_hash -> {dimension: grade mapped to [0, 1]}; raises ValueError naming row and column."""
    grades: dict[str, dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "sample_hash" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a 'sample_hash' column (export the CSV with --review-export)")
        for row_number, row in enumerate(reader, start=2):
            graded = {}
            for dim in DIMENSIONS:
                cell = (row.get(f"grade_{dim}") or "").strip()
                if not cell:
                    continue
                try:
                    grade = float(cell)
                except ValueError:
                    grade = math.nan
                if not GRADE_MIN <= grade <= GRADE_MAX:
                    raise ValueError(f"{path} row {row_number} column grade_{dim}: {cell!r} is not a grade "
                                     f"{GRADE_MIN}-{GRADE_MAX}")
                graded[dim] = (grade - GRADE_MIN) / (GRADE_MAX - GRADE_MIN)
            if graded:
                grades[row["sample_hash"]] = graded
    return grades


def agreement(pairs: dict[str, list[tuple[float, float]]], thresholds: dict) -> dict:
    """Per dimension: (auto, human) pairs -> keep/drop agreement, Cohen's kappa, mean |auto - human|."""
    out = {}
    for dim, values in sorted(pairs.items()):
        threshold = thresholds.get(dim) if thresholds.get(dim) is not None else 0.5
        auto = [a >= threshold for a, _ in values]
        human = [h >= threshold for _, h in values]
        n = len(values)
        observed = sum(a == h for a, h in zip(auto, human)) / n
        p_auto, p_human = sum(auto) / n, sum(human) / n
        expected = p_auto * p_human + (1 - p_auto) * (1 - p_human)
        kappa = 1.0 if expected == 1 else (observed - expected) / (1 - expected)
        out[dim] = {"graded": n, "agreement": round(observed, 4), "kappa": round(kappa, 4),
                    "mean_abs_diff": round(sum(abs(a - h) for a, h in values) / n, 4)}
    return out
