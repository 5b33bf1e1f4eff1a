"""The one chat template (Qwen style), used by training, evaluation and the exported model.

Each turn renders as ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a generation prompt ends with
``<|im_start|>assistant\\n``. LLaVA roles map ``human→user``, ``gpt→assistant``, ``system→system``.

Loss falls only on assistant turns: their content and the closing ``<|im_end|>`` (so the model
learns to stop); the role header and the newline after ``<|im_end|>`` are context. Each
``<image>`` becomes ``image_tokens`` copies of ``<|image_pad|>`` (``tokens_per_image(config)``).

The next-token shift happens here, per sample, BEFORE packing, so a label never crosses samples:
``labels[i] = ids[i+1]`` when ``ids[i+1]`` is trainable, else IGNORE_INDEX; the last label is
always IGNORE_INDEX. Example (``A`` = assistant content token, ``E`` = ``<|im_end|>``)::

    ids      = [S  assistant \\n  A1 A2 E  \\n]
    trainable= [0  0         0   1  1  1  0 ]
    labels   = [I  I         A1  A2 E  I  I ]

Text is encoded piece by piece (header, content between images, ``<|im_end|>``, ``\\n``); every
piece boundary is a special token or a newline, where both backends split anyway, so the ids
equal those of encoding the rendered string (tested for both backends).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER, SPEAKER_ROLES
from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.tokenizer import IM_END, IM_START, Tokenizer

# LLaVA speakers and the role names themselves (Hugging Face messages) → the role rendered.
ROLES = {**SPEAKER_ROLES, **{role: role for role in SPEAKER_ROLES.values()}}

# The same template for Hugging Face's tokenizer_config.json ("chat_template"); messages use the
# HF roles (user/assistant/system), content is a string with <image> placeholders left in place.
CHAT_TEMPLATE_JINJA = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass
class TokenizedConversation:
    input_ids: torch.Tensor  # [n] int64, <image> already expanded
    labels: torch.Tensor  # [n] int64, shifted; IGNORE_INDEX where no loss
    num_images: int

    @property
    def num_trainable(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def role_of(turn: Mapping[str, str], sample_id: str = "?", index: int = 0) -> str:
    speaker = turn.get("from", turn.get("role"))
    if speaker not in ROLES:
        raise ValueError(f"sample {sample_id}: turn {index} has speaker {speaker!r}; expected one of {sorted(ROLES)}")
    return ROLES[speaker]


def to_messages(conversations: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """LLaVA turns → HF chat messages ``[{"role": "user", "content": ...}, ...]``."""
    return [{"role": role_of(t, index=i), "content": t.get("value", t.get("content", ""))}
            for i, t in enumerate(conversations)]


def render_conversation(conversations: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The template as text, ``<image>`` left in place (what CHAT_TEMPLATE_JINJA renders)."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in to_messages(conversations))
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def _encode_content(text: str, tokenizer: Tokenizer, image_tokens: int) -> tuple[list[int], int]:
    ids: list[int] = []
    parts = text.split(IMAGE_PLACEHOLDER)
    for i, part in enumerate(parts):
        if i:
            ids.extend([tokenizer.image_token_id] * image_tokens)
        if part:
            ids.extend(tokenizer.encode(part))
    return ids, len(parts) - 1


def encode_turns(conversations: Sequence[Mapping[str, str]], tokenizer: Tokenizer, image_tokens: int,
                 sample_id: str = "?", add_generation_prompt: bool = False) -> tuple[list[int], list[bool], int]:
    """Ids, a trainable flag per id, and the number of images, for the rendered conversation."""
    ids: list[int] = []
    trainable: list[bool] = []
    num_images = 0
    newline = tokenizer.encode("\n")

    def add(piece: list[int], train: bool) -> None:
        ids.extend(piece)
        trainable.extend([train] * len(piece))

    for index, turn in enumerate(conversations):
        role = role_of(turn, sample_id, index)
        content = turn.get("value", turn.get("content"))
        if not isinstance(content, str):
            raise ValueError(f"sample {sample_id}: turn {index} has no string 'value'")
        is_assistant = role == "assistant"
        add(tokenizer.encode(f"{IM_START}{role}\n"), False)
        content_ids, n = _encode_content(content, tokenizer, image_tokens)
        num_images += n
        add(content_ids, is_assistant)
        add([tokenizer.token_to_id(IM_END)], is_assistant)  # type: ignore[list-item]
        add(newline, False)
    if add_generation_prompt:
        add(tokenizer.encode(f"{IM_START}assistant\n"), False)
    return ids, trainable, num_images


def tokenize_conversation(conversations: Sequence[Mapping[str, str]], tokenizer: Tokenizer, image_tokens: int,
                          sample_id: str = "?") -> TokenizedConversation:
    """Training form: ids and per-sample shifted labels (loss on assistant content + ``<|im_end|>``)."""
    ids, trainable, num_images = encode_turns(conversations, tokenizer, image_tokens, sample_id)
    labels = [ids[i + 1] if trainable[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)] + [IGNORE_INDEX]
    return TokenizedConversation(torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64),
                                 num_images)


def tokenize_generation_prompt(conversations: Sequence[Mapping[str, str]], tokenizer: Tokenizer,
                               image_tokens: int) -> list[int]:
    """Evaluation form: system? + user turn(s) + ``<|im_start|>assistant\\n``; generation stops at
    ``tokenizer.eos_id`` (``<|im_end|>``)."""
    if conversations and role_of(conversations[-1], index=len(conversations) - 1) == "assistant":
        raise ValueError("a generation prompt must end with a user turn, not an assistant turn")
    ids, _, _ = encode_turns(conversations, tokenizer, image_tokens, add_generation_prompt=True)
    return ids


def question_prompt(question: str, num_images: int = 1, system: str | None = None) -> list[dict[str, str]]:
    """A one-question conversation, images first as in the training data: ``<image>\\n...``."""
    turns = [{"from": "system", "value": system}] if system else []
    return turns + [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n" * num_images + question}]
