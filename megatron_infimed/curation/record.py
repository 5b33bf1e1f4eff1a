"""The common record every reader produces, and the structural checks all formats share.

A reader turns one input item into either a ``Record`` (a conversation plus image paths plus
metadata) or a ``RecordError`` (a named drop reason with the file and line). Errors are values,
not exceptions, so one bad record never stops a run and every drop is counted.

Reason names are ``"<stage>/<what>"``: ``parse/...`` for records that cannot be read,
``load/...`` for images that cannot be decoded, ``<dimension>/...`` for quality failures and
``duplicate/...`` for dedup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER, SPEAKERS


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    source: str
    conversations: list[dict]  # [{"from": "human"|"gpt"|"system", "value": str}, ...]
    image_paths: list[str]  # resolved paths, in placeholder order
    metadata: dict = field(default_factory=dict)
    location: str = ""  # "file:line" or "file[index]", for error messages


@dataclass(frozen=True, slots=True)
class RecordError:
    id: str | None
    reason: str  # e.g. "parse/malformed_json"
    detail: str  # names the file, line and what was expected
    location: str = ""


def structural_error(conversations: object) -> tuple[str, str] | None:
    """Return ``(reason, detail)`` when a conversation cannot be a training sample, else None.

    Example: ``[{"from": "human", "value": "<image>\\nHi"}]`` -> ``("parse/no_assistant_turn", ...)``.
    """
    if not isinstance(conversations, list) or not conversations:
        return "parse/empty_conversation", "expected a non-empty list of turns"
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in SPEAKERS or not isinstance(turn.get("value"), str):
            return "parse/bad_turn", f"turn {i} must be {{'from': one of {SPEAKERS}, 'value': str}}, got {turn!r:.80}"
    if not any(t["from"] == "gpt" for t in conversations):
        return "parse/no_assistant_turn", "expected at least one turn with 'from': 'gpt'"
    return None


def conversation_text(conversations: list[dict], *, roles: tuple[str, ...] = SPEAKERS) -> str:
    """All turn values of the given roles joined by newlines, placeholders removed."""
    return "\n".join(t["value"].replace(IMAGE_PLACEHOLDER, "").strip() for t in conversations if t["from"] in roles)


def normalise_text(text: str) -> str:
    """Lowercase, collapse whitespace and strip punctuation: the text side of the dedup key."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def qa_pairs(conversations: list[dict]) -> list[tuple[str, str]]:
    """(human question, following gpt answer) pairs, placeholders removed."""
    pairs = []
    for prev, turn in zip(conversations, conversations[1:]):
        if prev["from"] == "human" and turn["from"] == "gpt":
            pairs.append((prev["value"].replace(IMAGE_PLACEHOLDER, "").strip(), turn["value"].strip()))
    return pairs
