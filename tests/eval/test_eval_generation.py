"""Generation with the tiny model: the KV cache changes the cost, not the tokens, and
``infimed-eval run`` answers a benchmark end to end from a training checkpoint."""

import json
import random
import shutil

import pytest
import torch
from PIL import Image

from megatron_infimed.checkpoint.dist import save_weights
from megatron_infimed.cli import evaluate
from megatron_infimed.config.presets import get_preset
from megatron_infimed.data.tokenizer import align_model_config, load_tokenizer, train_sentencepiece
from megatron_infimed.eval.generation import greedy_generate
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.model.init import initialize_weights

CONFIG = get_preset("tiny")


@pytest.fixture(scope="module")
def model(mcore_world):
    m = InfiMedModel(CONFIG)
    # A wide init makes a random model's greedy choices vary from step to step.
    initialize_weights(m, seed=4, std=0.3)
    return m.eval()


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out, images = [], []
    for length in lengths:
        ids = torch.randint(0, 1500, (length,), generator=g)
        ids[:16] = CONFIG.image_token_id
        out.append(ids)
        images.append(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1)
    return out, images


def test_kv_cache_generation_equals_recomputing_everything(model):
    ids, images = prompts([24, 31, 24, 40])
    cached = greedy_generate(model, ids, images, max_new_tokens=10, eos_id=-1, use_cache=True)
    recomputed = greedy_generate(model, ids, images, max_new_tokens=10, eos_id=-1, use_cache=False)
    assert cached == recomputed
    assert all(len(row) == 10 for row in cached)
    assert len({t for row in cached for t in row}) > 4, "the check needs varied tokens to mean anything"


def test_batched_generation_equals_one_prompt_at_a_time(model):
    ids, images = prompts([20, 20, 20], seed=1)
    together = greedy_generate(model, ids, images, max_new_tokens=6, eos_id=-1)
    alone = [greedy_generate(model, [i], [p], max_new_tokens=6, eos_id=-1)[0] for i, p in zip(ids, images)]
    assert together == alone


def test_generation_stops_at_eos(model):
    ids, images = prompts([22])
    full = greedy_generate(model, ids, images, max_new_tokens=8, eos_id=-1)[0]
    stopped = greedy_generate(model, ids, images, max_new_tokens=8, eos_id=full[3])[0]
    assert stopped == full[: full.index(full[3])]


def test_eval_run_answers_a_benchmark_from_a_checkpoint(model, tmp_path, capsys):
    rng = random.Random(0)
    words = "is there a lesion in this image yes no ct scan mri x-ray organ".split()
    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    tokenizer_path = train_sentencepiece(corpus, tmp_path / "tok", vocab_size=400)
    config = align_model_config(CONFIG, load_tokenizer(tokenizer_path))
    checkpoint_model = InfiMedModel(config)
    initialize_weights(checkpoint_model, seed=2)
    directory = save_weights(str(tmp_path / "ckpt"), [checkpoint_model])
    (directory / "tokenizer").mkdir()
    shutil.copy(tokenizer_path, directory / "tokenizer" / "tokenizer.model")
    Image.new("L", (40, 30), 128).save(tmp_path / "a.png")
    lines = [{"id": i, "image": "a.png", "question": "Is there a lesion?", "answer": "yes" if i % 2 else "no"}
             for i in range(5)] + [{"id": 9, "image": "gone.png", "question": "Is this a CT scan?", "answer": "no"}]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    code = evaluate.main(["run", "--model", str(tmp_path / "ckpt"), "--benchmark", "jsonl",
                          "--data", str(tmp_path / "bench.jsonl"), "--output", str(tmp_path / "out"),
                          "--batch-size", "2", "--max-new-tokens", "3"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["n_total"], results["n_closed"], results["n_skipped"]) == (6, 5, 1)
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all(isinstance(p["prediction"], (str, type(None))) for p in predictions)
    assert sum(p["prediction"] is not None for p in predictions) == 5
