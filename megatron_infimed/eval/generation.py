"""Greedy generation for ``infimed-eval run`` and the demo.

| model path                      | how it runs                                                   |
|---------------------------------|---------------------------------------------------------------|
| a training / imported checkpoint| our InfiMedModel on megatron-core (TP=1 here), KV cache from    |
|                                 | megatron-core's ``StaticInferenceContext``                      |
| an exported Hugging Face folder | transformers with ``trust_remote_code`` and its own KV cache    |

Prompts use the training chat template and image preprocessing. With the KV cache, prompts of the
same length are decoded together as one batch (no padding, so RoPE positions and attention are
exactly those of a single prompt); ``use_cache=False`` recomputes the whole sequence each step and
serves as the reference the cache must equal.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from megatron_infimed.eval.questions import Question
from megatron_infimed.eval.runner import AnswerFn


@torch.no_grad()
def greedy_generate(model, prompts: list[torch.Tensor], images: list[torch.Tensor], max_new_tokens: int,
                    eos_id: int, use_cache: bool = True) -> list[list[int]]:
    """New token ids for each prompt (``prompts[i]`` [L] ids, ``images[i]`` [K, 3, H, W]), stopping
    at ``eos_id`` (not included) or after ``max_new_tokens``."""
    device = next(model.parameters()).device  # prompts may come from the CPU; the model may be on a GPU
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[len(prompt)].append(i)
    results: list[list[int]] = [[] for _ in prompts]
    for members in groups.values():
        tokens = torch.stack([prompts[i] for i in members]).to(device)
        pixels = torch.cat([images[i] for i in members]).to(device) if members else None
        step = _decode_cached if use_cache else _decode_recompute
        for row, ids in zip(members, step(model, tokens, pixels, max_new_tokens, eos_id)):
            results[row] = ids
    return results


def _positions(batch: int, start: int, length: int, device: torch.device) -> torch.Tensor:
    return torch.arange(start, start + length, device=device).expand(batch, -1)


def _finish(generated: torch.Tensor, eos_id: int) -> list[list[int]]:
    out = []
    for row in generated.tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


def _decode_cached(model, tokens, pixels, max_new_tokens, eos_id):
    from megatron.core.inference.contexts import StaticInferenceContext

    batch, length = tokens.shape
    context = StaticInferenceContext(batch, length + max_new_tokens)
    logits = model(tokens, _positions(batch, 0, length, tokens.device), images=pixels, inference_context=context)
    context.sequence_len_offset += length
    generated = [logits[:, -1].argmax(-1)]
    done = generated[-1] == eos_id
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            break
        offset = context.sequence_len_offset
        logits = model(generated[-1].view(batch, 1), _positions(batch, offset, 1, tokens.device),
                       inference_context=context)
        context.sequence_len_offset += 1
        generated.append(logits[:, -1].argmax(-1))
        done |= generated[-1] == eos_id
    return _finish(torch.stack(generated, dim=1), eos_id)


def _decode_recompute(model, tokens, pixels, max_new_tokens, eos_id):
    batch = tokens.shape[0]
    generated = []
    for _ in range(max_new_tokens):
        sequence = torch.cat([tokens, *[g.view(batch, 1) for g in generated]], dim=1)
        logits = model(sequence, _positions(batch, 0, sequence.shape[1], tokens.device), images=pixels)
        generated.append(logits[:, -1].argmax(-1))
        if bool(torch.stack(generated, 1).eq(eos_id).any(1).all()):
            break
    return _finish(torch.stack(generated, dim=1), eos_id)


class MegatronGenerator:
    """A checkpoint loaded into one process for evaluation (weights resharded to TP=1, PP=1)."""

    def __init__(self, checkpoint: str | Path):
        from megatron_infimed.checkpoint import dist as ckpt
        from megatron_infimed.checkpoint.layout import (
            MODEL_CONFIG,
            TOKENIZER_DIR,
            TRACKER,
            iteration_folder,
            latest_iteration,
        )
        from megatron_infimed.config.presets import ModelConfig
        from megatron_infimed.config.run import ParallelConfig
        from megatron_infimed.data.images import ImagePreprocessor
        from megatron_infimed.data.tokenizer import load_tokenizer
        from megatron_infimed.model.infimed import InfiMedModel
        from megatron_infimed.model.token_reduction import tokens_per_image
        from megatron_infimed.runtime import distributed

        root = Path(checkpoint)
        if latest_iteration(root) is None:
            raise FileNotFoundError(f"no checkpoint under {root} (missing {TRACKER})")
        directory = iteration_folder(root)
        if not torch.distributed.is_initialized():
            distributed.initialize(ParallelConfig(), seed=0)
        self.config = ModelConfig.from_dict(json.loads((directory / MODEL_CONFIG).read_text()))
        self.tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
        self.model = InfiMedModel(self.config)
        ckpt.load_weights(str(root), [self.model])
        # Built on the CPU (use_cpu_initialization); the KV cache and RoPE live on the rank's device.
        self.model.to(distributed.device()).eval()
        self.images = ImagePreprocessor.for_vision(self.config.vision)
        self.image_tokens = tokens_per_image(self.config)

    def prompt(self, question: str, image_path: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
        from megatron_infimed.data.chat_template import question_prompt, tokenize_generation_prompt

        n = 0 if image_path is None else 1
        ids = tokenize_generation_prompt(question_prompt(question, num_images=n), self.tokenizer,
                                         self.image_tokens)
        size = self.config.vision.image_size
        pixels = torch.zeros(0, 3, size, size)
        if image_path is not None:
            pixels = self.images.normalize(self.images.decode(Path(image_path).read_bytes())).unsqueeze(0)
        return torch.tensor(ids, dtype=torch.long), pixels

    def answer(self, questions: list[Question], max_new_tokens: int, use_cache: bool = True) -> list[str]:
        prompts, pixels = zip(*(self.prompt(q.question, q.image) for q in questions))
        ids = greedy_generate(self.model, list(prompts), list(pixels), max_new_tokens, self.tokenizer.eos_id,
                              use_cache)
        return [self.tokenizer.decode(row).strip() for row in ids]


def load_answer_fn(model_path: str, max_new_tokens: int) -> AnswerFn:
    """Load the model at ``model_path``; the returned function answers a batch of questions."""
    path = Path(model_path)
    if (path / "config.json").is_file():
        return _hf_answer_fn(path, max_new_tokens)
    generator = MegatronGenerator(path)
    return lambda questions: generator.answer(list(questions), max_new_tokens)


def _hf_answer_fn(path: Path, max_new_tokens: int) -> AnswerFn:
    """An exported folder through transformers (its generate() keeps a KV cache); prompts and
    images are prepared by the folder's own AutoProcessor, as a transformers user would."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from megatron_infimed.data.chat_template import question_prompt, render_conversation

    if not (path / "processor_config.json").is_file():
        raise FileNotFoundError(f"{path} has no processor_config.json: export it again with this version of "
                                f"infimed-convert export-hf (full export, not --language-only)")
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    tokenizer = processor.tokenizer

    def answer(questions: list[Question]) -> list[str]:
        outputs = []
        for q in questions:
            n = 0 if q.image is None else 1
            text = render_conversation(question_prompt(q.question, n), add_generation_prompt=True)
            images = [Image.open(q.image)] if n else None
            inputs = processor(text=text, images=images)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
            outputs.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
        return outputs

    return answer
