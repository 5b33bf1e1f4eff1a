"""Five-dimension quality assessment: a registry of pluggable scorers and their configuration.

Each dimension has one scorer object with ``score(record, images) -> DimensionScore``; the default
ones are deterministic rules (one module per dimension). A YAML key ``scorers`` swaps in any
``"module:factory"`` instead, and the optional model judge (``curation/judge.py``) combines with
the rule score as ``min(rule, judge)`` so a judge can never lift a hard rule failure.

Decision: a sample is dropped when any enabled dimension's score is below its threshold; its
reasons are ``"<dimension>/<issue>"`` in dimension order, and the first one is the reason it is
counted under in the report.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Protocol

import yaml

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.record import Record

DIMENSIONS = (
    "image_quality",
    "text_quality",
    "image_text_consistency",
    "medical_relevance",
    "answer_reliability",
)
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "quality.yaml")


@dataclass(frozen=True, slots=True)
class DimensionScore:
    score: float  # in [0, 1]
    issues: tuple[str, ...] = ()  # short names, e.g. ("blank",); empty when clean


class Scorer(Protocol):
    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore: ...


def penalties_to_score(penalties: dict[str, float]) -> DimensionScore:
    """Issues found -> score: the worst issue decides (1.0 when there is none).

    Example: ``{"truncated": 0.4, "markup": 0.3}`` -> ``DimensionScore(0.3, ("truncated", "markup"))``.
    """
    if not penalties:
        return DimensionScore(1.0)
    return DimensionScore(min(penalties.values()), tuple(penalties))


@dataclass(frozen=True, slots=True)
class QualityConfig:
    thresholds: dict[str, float | None]
    options: dict[str, dict]  # dimension -> scorer options
    max_pixels: int = 64_000_000
    near_hamming: int = 8
    near_colour: int = 16
    scorers: dict[str, str] = field(default_factory=dict)  # dimension -> "module:factory"

    @classmethod
    def load(cls, path: str | None = None) -> QualityConfig:
        """Defaults from the shipped quality.yaml, with the keys of ``path`` (if given) on top."""
        with open(DEFAULT_CONFIG_PATH, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if path:
            with open(path, encoding="utf-8") as f:
                user = yaml.safe_load(f) or {}
            if not isinstance(user, dict):
                raise ValueError(f"{path}: expected a YAML mapping at the top level")
            for key, value in user.items():
                if key not in data:
                    raise ValueError(f"{path}: unknown key {key!r}; expected one of {sorted(data)}")
                data[key] = {**data[key], **value} if isinstance(data[key], dict) and isinstance(value, dict) else value
        unknown = set(data["thresholds"]) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"thresholds: unknown dimension(s) {sorted(unknown)}; expected {DIMENSIONS}")
        return cls(
            thresholds={d: data["thresholds"].get(d) for d in DIMENSIONS},
            options={d: dict(data.get(d) or {}) for d in DIMENSIONS},
            max_pixels=int(data["max_pixels"]),
            near_hamming=int(data["dedup"]["near_hamming"]),
            near_colour=int(data["dedup"]["near_colour"]),
            scorers=dict(data.get("scorers") or {}),
        )

    def with_thresholds(self, **changes: float | None) -> QualityConfig:
        return QualityConfig({**self.thresholds, **changes}, self.options, self.max_pixels, self.near_hamming,
                             self.near_colour, self.scorers)


def _default_factories() -> dict:
    from megatron_infimed.curation.quality import consistency, image_quality, relevance, reliability, text_quality

    return {
        "image_quality": image_quality.ImageQualityScorer,
        "text_quality": text_quality.TextQualityScorer,
        "image_text_consistency": consistency.ConsistencyScorer,
        "medical_relevance": relevance.RelevanceScorer,
        "answer_reliability": reliability.ReliabilityScorer,
    }


def build_scorers(config: QualityConfig) -> dict[str, Scorer]:
    """One scorer per dimension: the YAML's ``scorers`` entry if present, else the rule scorer."""
    factories = _default_factories()
    scorers = {}
    for dim in DIMENSIONS:
        factory = factories[dim]
        if dim in config.scorers:
            module_name, _, attr = config.scorers[dim].partition(":")
            if not attr:
                raise ValueError(f"scorers.{dim}: expected 'package.module:factory', got {config.scorers[dim]!r}")
            factory = getattr(importlib.import_module(module_name), attr)
        scorers[dim] = factory(**config.options[dim])
    return scorers


def score_all(scorers: dict[str, Scorer], record: Record, images: list[LoadedImage]) -> dict[str, DimensionScore]:
    return {dim: scorers[dim].score(record, images) for dim in DIMENSIONS}


def decide(scores: dict[str, float], issues: dict[str, list[str]], thresholds: dict[str, float | None]) -> list[str]:
    """Drop reasons (empty list = keep), in dimension order.

    Example: scores ``{"text_quality": 0.1, ...}`` with issues ``{"text_quality": ["repetition"]}``
    and threshold 0.5 -> ``["text_quality/repetition"]``.
    """
    reasons = []
    for dim in DIMENSIONS:
        threshold = thresholds.get(dim)
        if threshold is not None and dim in scores and scores[dim] < threshold:
            reasons.extend(f"{dim}/{issue}" for issue in (issues.get(dim) or ["below_threshold"]))
    return reasons
