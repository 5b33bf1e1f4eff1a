"""Resume is exact: a run killed at any point and rerun with the same command produces the same
per-iteration losses as an uninterrupted run (bitwise on CPU) and trains the same samples, none
repeated, none skipped. SIGTERM saves and exits with the signal's code."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainrun import read_metrics, shard_flags

from megatron_infimed.checkpoint.layout import latest_iteration

pytestmark = pytest.mark.slow
ITERS = 8


def command(dataset, tokenizer, run_dir: Path, ckpt: Path, *extra: str) -> list[str]:
    # One epoch of 48 samples; 8 packs of ~5 samples stay inside it.
    return [sys.executable, "-m", "megatron_infimed.cli.train", *shard_flags(dataset, tokenizer, num_epochs=1),
            "--seq-length", "192", "--global-batch-size", "1", "--train-iters", str(ITERS), "--lr", "3e-3",
            "--seed", "5", "--log-interval", "1", "--save-interval", "2", "--save", str(ckpt), "--load", str(ckpt),
            "--run-dir", str(run_dir), *extra]


def run_to_end(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-4000:]


def _env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def start_and_wait_for(cmd: list[str], run_dir: Path, records: int) -> subprocess.Popen:
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 240
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= records:
            return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"run did not reach {records} records: {process.stderr.read()[-3000:]}")


def ledger(run_dir: Path) -> dict[int, list[str]]:
    """iteration → sample ids (one record each: a resume drops the records it will redo)."""
    entries = [json.loads(line) for line in (run_dir / "samples-dp0.jsonl").read_text().splitlines()]
    return {e["iteration"]: e["sample_ids"] for e in entries}


@pytest.fixture(scope="module")
def reference(shard_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    run_to_end(command(*shard_dataset, root / "run", root / "ckpt"))
    return read_metrics(root / "run"), ledger(root / "run")


@pytest.mark.parametrize("kill_after, flags", [(3, []), (6, []), (5, ["--async-save"])])
def test_sigkill_then_rerun_reproduces_the_uninterrupted_run(shard_dataset, tmp_path, reference, kill_after, flags):
    ref_metrics, ref_ledger = reference
    cmd = command(*shard_dataset, tmp_path / "run", tmp_path / "ckpt", *flags)
    process = start_and_wait_for(cmd, tmp_path / "run", kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_to_end(cmd)
    by_iteration = {r["iteration"]: r["loss"] for r in ref_metrics}
    records = read_metrics(tmp_path / "run")
    # Lines of the iterations after the checkpoint were dropped at the resume, then logged again.
    assert [r["iteration"] for r in records] == list(range(1, ITERS + 1))
    for record in records:  # replayed iterations too: every record equals the reference bitwise
        assert record["loss"] == by_iteration[record["iteration"]], record["iteration"]
    assert ledger(tmp_path / "run") == ref_ledger
    trained = [s for i in sorted(ref_ledger) for s in ref_ledger[i]]
    assert len(trained) == len(set(trained)) > 8, "within one epoch no sample is trained twice"


def test_sigterm_saves_and_exits_with_the_signal_code(shard_dataset, tmp_path):
    cmd = command(*shard_dataset, tmp_path / "run", tmp_path / "ckpt", "--save-interval", "100")
    process = start_and_wait_for(cmd, tmp_path / "run", 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM  # a requeue tells it from a finished run
    last_logged = read_metrics(tmp_path / "run")[-1]["iteration"]
    assert last_logged < ITERS
    assert latest_iteration(tmp_path / "ckpt") == last_logged


def test_an_unfinished_save_is_never_loaded(shard_dataset, tmp_path):
    cmd = command(*shard_dataset, tmp_path / "run", tmp_path / "ckpt", "--train-iters", "2")
    run_to_end(cmd)
    # A save of iteration 4 that died before the tracker was written: a folder, no tracker entry.
    (tmp_path / "ckpt" / "iter_0000004").mkdir()
    (tmp_path / "ckpt" / "iter_0000004" / "garbage.distcp").write_bytes(b"\0" * 10)
    run_to_end(command(*shard_dataset, tmp_path / "run", tmp_path / "ckpt", "--train-iters", "4"))
    records = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert latest_iteration(tmp_path / "ckpt") == 4
