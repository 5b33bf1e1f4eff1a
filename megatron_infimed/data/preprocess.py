"""One shard sample (raw bytes) → one ``Sample`` (ids, shifted labels, uint8 pixels), and the
rule for samples longer than the sequence.

A ``Sample`` keeps its raw member bytes (``raw``) next to the tensors: the packer's buffer is
part of the loader state, and saving compressed bytes (re-decoded deterministically on restore)
is far smaller than saving decoded pixels.

Overlong samples (``overlong="truncate"``, default, or ``"drop"``)::

    ids = [prompt.. <img x144> question.. answer.. <|im_end|>]   length 700, limit 512
    truncate → cut at 512, moved back to the start of an image run if the cut falls inside it
               (an image is never split; images after the cut go with their text);
    dropped instead (reason counted) when the kept part has no trainable token, with reason
    ``images_exceed_seq_length`` if the image tokens alone exceed the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from megatron_infimed.data.chat_template import tokenize_conversation
from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.tokenizer import Tokenizer

OVERLONG_POLICIES = ("truncate", "drop")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is a short counter name, the message names the sample."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Sample:
    sample_id: str
    source: str
    input_ids: torch.Tensor  # [n] int64
    labels: torch.Tensor  # [n] int64, shifted, IGNORE_INDEX where no loss
    pixels: torch.Tensor  # [k, 3, H, W] uint8
    raw: dict[str, bytes] = field(default_factory=dict, repr=False)
    truncated: bool = False

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_images(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def num_trainable(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class SamplePreprocessor:
    tokenizer: Tokenizer
    image_tokens: int  # tokens_per_image(model_config)
    images: ImagePreprocessor

    def __call__(self, raw: dict[str, bytes], key: str = "?") -> Sample:
        """``raw`` = the tar members of one key: ``json`` plus one entry per ``image_members`` extension."""
        try:
            record = json.loads(raw["json"])
        except KeyError:
            raise BadSample("missing_json", f"sample {key}: no .json member") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSample("bad_json", f"sample {key}: .json member is not valid JSON ({exc})") from None
        sample_id = str(record.get("id", key))
        members = record.get("image_members", [])
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise BadSample("bad_conversations", f"sample {sample_id} (key {key}): 'conversations' must be a "
                                                 f"non-empty list")
        try:
            tokenized = tokenize_conversation(conversations, self.tokenizer, self.image_tokens, sample_id)
        except ValueError as exc:
            raise BadSample("bad_conversations", str(exc)) from None
        if tokenized.num_images != len(members):
            raise BadSample("image_count_mismatch", f"sample {sample_id} (key {key}): {tokenized.num_images} "
                                                    f"<image> placeholders but image_members={members}")
        if tokenized.num_trainable == 0:
            raise BadSample("no_assistant_turn", f"sample {sample_id} (key {key}): no assistant text to train on")
        pixels = []
        for ext in members:
            if ext not in raw:
                raise BadSample("missing_image", f"sample {sample_id} (key {key}): image member .{ext} is absent")
            try:
                pixels.append(self.images.decode(raw[ext]))
            except Exception as exc:  # PIL raises many types for bad data; all mean "undecodable"
                raise BadSample("bad_image", f"sample {sample_id} (key {key}): image .{ext} cannot be "
                                             f"decoded ({type(exc).__name__}: {exc})") from None
        size = self.images.image_size
        stacked = torch.stack(pixels) if pixels else torch.empty(0, 3, size, size, dtype=torch.uint8)
        keep = {"json": raw["json"], **{ext: raw[ext] for ext in members}}
        return Sample(sample_id, str(record.get("source", "")), tokenized.input_ids, tokenized.labels,
                      stacked, keep)


def fit_to_length(sample: Sample, max_length: int, policy: str, image_token_id: int,
                  image_tokens: int) -> tuple[Sample | None, str | None]:
    """``(sample, None)`` if it fits, ``(truncated, "truncated")``, or ``(None, drop_reason)``."""
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"unknown overlong policy {policy!r}; expected one of {OVERLONG_POLICIES}")
    if sample.length <= max_length:
        return sample, None
    if sample.num_images * image_tokens > max_length:
        return None, "images_exceed_seq_length"
    if policy == "drop":
        return None, "overlong_dropped"
    is_image = sample.input_ids[:max_length] == image_token_id
    image_positions = torch.nonzero(is_image).flatten()
    whole_images = len(image_positions) // image_tokens
    cut = max_length
    if len(image_positions) % image_tokens:  # the cut falls inside an image run: keep it whole or not at all
        cut = int(image_positions[whole_images * image_tokens])
    labels = sample.labels[:cut]
    if not bool((labels != IGNORE_INDEX).any()):
        return None, "no_trainable_token_after_truncation"
    # ``raw`` stays whole: a restored loader re-runs preprocess + fit_to_length and gets this same cut.
    return replace(sample, input_ids=sample.input_ids[:cut], labels=labels, pixels=sample.pixels[:whole_images],
                   truncated=True), "truncated"
