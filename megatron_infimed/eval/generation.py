"""Model generation for ``infimed-eval run``: turns a checkpoint into an ``answer_fn`` for
``run_benchmark`` (batched greedy decoding with the training chat template and image preprocessing).
"""

from __future__ import annotations

from megatron_infimed.eval.runner import AnswerFn


def load_answer_fn(model_path: str, max_new_tokens: int) -> AnswerFn:
    """Load the model at ``model_path``; the returned function answers a batch of questions."""
    raise NotImplementedError(
        "generation lands with the model; until then use `infimed-eval score` on predictions made elsewhere"
    )
