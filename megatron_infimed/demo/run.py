"""Run the whole recipe on the CPU with the tiny preset and write a report.

    synthetic data → infimed-prepare (quality report, shards) → SentencePiece tokenizer
    → pretrain → stage1 → stage2 → stage3   (each stage: ``infimed-train --config``)
    → closed-question accuracy after each stage, in-distribution and shifted
    → export to Hugging Face format → one answer generated through transformers

Each stage is a real ``infimed-train`` process that starts from the previous stage's checkpoint
(``--pretrained-checkpoint``), exactly as ``launch/stageN.sh`` runs them on a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_infimed.demo.data import build_datasets, train_tokenizer
from megatron_infimed.demo.report import write_report


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    train_size: int = 800  # records generated per distribution
    test_size: int = 300
    vocab_size: int = 512
    seq_length: int = 512
    global_batch_size: int = 8
    iterations: tuple[tuple[str, int], ...] = (("pretrain", 30), ("stage1", 60), ("stage2", 300), ("stage3", 200))
    seed: int = 0

    @classmethod
    def fast(cls) -> DemoSettings:
        """Minutes → seconds: checks the plumbing, not the learning."""
        return cls(train_size=80, test_size=40, seq_length=256, global_batch_size=2,
                   iterations=(("pretrain", 2), ("stage1", 2), ("stage2", 2), ("stage3", 2)))


# What each stage trains on and which parts it freezes (the tiny model starts from random
# weights, so unlike the real recipe its vision encoder is trained after the pretrain stage).
STAGES = {
    "pretrain": {"blend": {"medical": 1.0}, "lr": 3e-3, "freeze": ["vision", "language"]},
    "stage1": {"blend": {"general": 1.0}, "lr": 3e-3, "freeze": []},
    "stage2": {"blend": {"medical": 1.0}, "lr": 5e-3, "freeze": []},
    "stage3": {"blend": {"medical": 0.5, "shifted": 0.3, "general": 0.2}, "lr": 3e-3, "freeze": []},
}


def stage_config(stage: str, iterations: int, settings: DemoSettings, datasets: dict, tokenizer: Path,
                 workdir: Path, previous: str | None) -> dict:
    spec = STAGES[stage]
    config = {
        "preset": "tiny", "tokenizer": str(tokenizer), "seq_length": settings.seq_length,
        "global_batch_size": settings.global_batch_size, "train_iters": iterations, "lr": spec["lr"],
        "min_lr": spec["lr"] / 10, "lr_warmup_iters": max(1, iterations // 10), "seed": settings.seed,
        # Every sample weighs the same: one-word yes/no answers would drown among captions otherwise.
        "loss_weighting": "sample", "log_interval": max(1, iterations // 10),
        "save": str(workdir / "checkpoints" / stage), "load": str(workdir / "checkpoints" / stage),
        "run_dir": str(workdir / "runs" / stage),
        "data": {"paths": [str(datasets["prepared"][name]) for name in spec["blend"]],
                 "weights": list(spec["blend"].values()), "num_workers": 1, "worker_processes": False,
                 "packing_buffer": 64},
    }
    for part in spec["freeze"]:
        config[f"freeze_{part}"] = True
    if previous:
        config["pretrained_checkpoint"] = str(workdir / "checkpoints" / previous)
    return config


def run_stage(config_path: Path, log_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log_path.open("w") as log:
        result = subprocess.run([sys.executable, "-m", "megatron_infimed.cli.train", "--config", str(config_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise RuntimeError(f"stage config {config_path} failed (exit {result.returncode}); see {log_path}")


def evaluate_stage(checkpoint: Path, tests: dict, out: Path) -> dict:
    from megatron_infimed.eval.benchmarks import load_benchmark
    from megatron_infimed.eval.generation import MegatronGenerator
    from megatron_infimed.eval.runner import run_benchmark

    generator = MegatronGenerator(checkpoint)
    results = {}
    for label, name in (("in_distribution", "medical"), ("shifted", "shifted")):
        questions = load_benchmark("jsonl", str(tests[name]))
        scores = run_benchmark(questions, lambda batch: generator.answer(batch, max_new_tokens=4), out / label,
                               batch_size=64, progress=False)
        results[label] = {"closed_accuracy": scores["closed_accuracy"], "n": scores["n_closed"]}
    return results


def majority_accuracy(test_file: Path) -> float:
    answers = [json.loads(line)["answer"].lower() for line in test_file.read_text().splitlines()]
    return max(answers.count("yes"), answers.count("no")) / len(answers)


def export_and_answer(checkpoint: Path, workdir: Path, tests: dict) -> dict:
    """Export the final checkpoint and let transformers answer the first in-distribution question,
    as ``infimed-eval run --model EXPORTED`` does (the folder's AutoProcessor builds the prompt)."""
    from megatron_infimed.convert.export_hf import export_hf
    from megatron_infimed.eval.generation import load_answer_fn
    from megatron_infimed.eval.questions import Question

    hf_dir = workdir / "hf_model"
    export_hf(str(checkpoint), str(hf_dir), progress=False)
    question = json.loads(tests["medical"].read_text().splitlines()[0])
    asked = Question(id="demo", question=question["question"], answer=question["answer"], type="closed",
                     image=Path(question["image"]))
    return {"folder": str(hf_dir), "question": question["question"], "gold": question["answer"],
            "answer": load_answer_fn(str(hf_dir), max_new_tokens=8)([asked])[0]}


def run_demo(workdir: Path, settings: DemoSettings) -> dict:
    start = time.time()
    # Absolute, so the test files' image paths resolve from wherever they are read.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[demo] synthetic data and curation in {workdir}", flush=True)
    datasets = build_datasets(workdir, settings.train_size, settings.test_size, 64, settings.seed)
    tokenizer = train_tokenizer(workdir, settings.vocab_size)
    results = {"majority_closed_accuracy": majority_accuracy(datasets["tests"]["medical"]), "stages": {}}
    (workdir / "configs").mkdir(exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    previous = None
    for stage, iterations in settings.iterations:
        config = stage_config(stage, iterations, settings, datasets, tokenizer, workdir, previous)
        config_path = workdir / "configs" / f"{stage}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"[demo] {stage}: {iterations} iterations", flush=True)
        run_stage(config_path, workdir / "logs" / f"{stage}.log")
        results["stages"][stage] = evaluate_stage(workdir / "checkpoints" / stage, datasets["tests"],
                                                  workdir / "eval" / stage)
        print(f"[demo] {stage}: {json.dumps(results['stages'][stage])}", flush=True)
        previous = stage
    results["export"] = export_and_answer(workdir / "checkpoints" / previous, workdir, datasets["tests"])
    results["quality"] = {name: {"total": r["total"], "kept": r["kept"]} for name, r in datasets["reports"].items()}
    results["seconds"] = round(time.time() - start, 1)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    write_report(workdir, results, [stage for stage, _ in settings.iterations])
    print(f"[demo] done in {results['seconds']} s: {workdir / 'report.md'}", flush=True)
    return results
