"""How ``infimed-train`` fails: one clear line and exit code 2 on bad input, never a silent NaN,
never code run from a checkpoint, never a corrupted or foreign checkpoint loaded or overwritten, a
save on SIGINT as on SIGTERM, and no helper process left behind by ``kill -9``."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainrun import read_metrics, shard_flags

from megatron_infimed.checkpoint.layout import TRACKER, latest_iteration

pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def train_command(tmp_path: Path, *extra: str, load: bool = True) -> list[str]:
    """A tiny mock-data run saving to (and, with ``load``, resuming from) ``tmp_path/ckpt``."""
    return [sys.executable, "-m", "megatron_infimed.cli.train", "--preset", "tiny", "--mock-data",
            "--seq-length", "128", "--save", str(tmp_path / "ckpt"), "--run-dir", str(tmp_path / "run"),
            "--log-interval", "1", *(["--load", str(tmp_path / "ckpt")] if load else []), *extra]


def train(tmp_path: Path, *extra: str, load: bool = True, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(tmp_path, *extra, load=load), capture_output=True, text=True,
                          timeout=timeout, env=_env())


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("infimed-train:")]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A run of 2 iterations with a checkpoint at each; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("saved")
    result = train(root, "--train-iters", "2", "--save-interval", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def copy_run(saved_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(saved_run / "ckpt", tmp_path / "ckpt")
    shutil.copytree(saved_run / "run", tmp_path / "run")
    return tmp_path


def test_a_diverging_run_stops_naming_the_iteration_and_keeps_its_last_finite_checkpoint(tmp_path):
    result = train(tmp_path, "--lr", "1e6", "--train-iters", "8", "--save-interval", "1", "--keep-last", "1")
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = error_lines(result)
    failed = int(line.split("iteration ")[1].split(":")[0])
    assert "NaN or inf" in line and failed >= 2
    assert latest_iteration(tmp_path / "ckpt") == failed - 1
    assert [p.name for p in (tmp_path / "ckpt").glob("iter_*")] == [f"iter_{failed - 1:07d}"]
    assert "Traceback" not in result.stderr


def test_without_the_nan_check_non_finite_weights_are_still_never_saved(tmp_path):
    result = train(tmp_path, "--lr", "1e6", "--train-iters", "4", "--no-check-for-nan-in-loss-and-grad")
    assert result.returncode == 2
    assert "iteration 4: parameter" in error_lines(result)[0]
    assert "refusing to save a non-finite model" in error_lines(result)[0]
    assert latest_iteration(tmp_path / "ckpt") is None


def test_a_corrupted_checkpoint_file_fails_the_resume_naming_the_file(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    shard = sorted((run / "ckpt" / "iter_0000002").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    shard.write_bytes(bytes(data))
    result = train(run, "--train-iters", "3")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert shard.name in line and "corrupted" in line
    assert latest_iteration(run / "ckpt") == 2  # nothing trained, nothing saved, nothing rotated


def test_a_checkpoint_metadata_naming_a_foreign_object_is_never_unpickled(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(victim),))

    (run / "ckpt" / "iter_0000002" / ".metadata").write_bytes(pickle.dumps(Payload()))
    result = train(run, "--train-iters", "3", "--no-verify-checkpoint")  # past the checksum, to the pickle
    assert result.returncode == 2
    assert "shutil.rmtree" in error_lines(result)[0] and "refusing" in error_lines(result)[0]
    assert victim.is_dir()


def test_load_of_a_folder_without_a_tracker_is_an_error_and_writes_nothing(tmp_path):
    data = tmp_path / "not_a_checkpoint"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    result = train(tmp_path, "--train-iters", "1", "--load", str(data), load=False)
    assert result.returncode == 2
    assert f"--load {data} holds no checkpoint" in error_lines(result)[0]
    assert not (tmp_path / "ckpt").exists()


def test_a_new_run_never_overwrites_another_runs_checkpoints(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "ckpt" / "iter_0000002").iterdir()}
    result = train(run, "--train-iters", "2", load=False)
    assert result.returncode == 2
    assert "already holds a run's checkpoints (iteration 2)" in error_lines(result)[0]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "ckpt" / "iter_0000002").iterdir()} == before


def test_a_resume_says_where_it_resumes_from_and_logs_each_iteration_once(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    (run / "ckpt" / TRACKER).write_text("1")  # as if killed after iteration 2 was logged, before its save
    result = train(run, "--train-iters", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from iteration 1 of {run / 'ckpt'}" in result.stdout
    assert [r["iteration"] for r in read_metrics(run / "run")] == [1, 2, 3]


def test_sigint_saves_and_exits_with_the_signal_code(tmp_path):
    process = subprocess.Popen(train_command(tmp_path, "--train-iters", "1000", "--save-interval", "1000"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_records(tmp_path / "run", 2, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT
    last = read_metrics(tmp_path / "run")[-1]["iteration"]
    assert latest_iteration(tmp_path / "ckpt") == last
    assert f"stopped by SIGINT after iteration {last}" in stderr


@pytest.mark.parametrize("flags", [[], ["--async-save"]], ids=["sync", "async"])
def test_kill_9_leaves_no_helper_process_of_a_checkpoint_writer(tmp_path, flags):
    process = subprocess.Popen(train_command(tmp_path, "--train-iters", "1000", "--save-interval", "1", *flags),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 180
    while latest_iteration(tmp_path / "ckpt") is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    helpers = _descendants(process.pid)
    assert latest_iteration(tmp_path / "ckpt") is not None and helpers, "an async save ran with helpers"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(pid) for pid in helpers):
        time.sleep(0.2)
    assert [pid for pid in helpers if _alive(pid)] == []


def _wait_for_records(run_dir: Path, records: int, process: subprocess.Popen) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= records:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"run did not log {records} iterations: {process.communicate()[1][-3000:]}")


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited and holds no memory


def test_a_change_of_image_tokens_on_resume_names_the_reduction(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    result = train(run, "--train-iters", "3", "--model-overrides", '{"reduction.kind": "none"}')
    assert result.returncode == 2
    [line] = error_lines(result)
    assert "tokens per image (reduction pool)" in line and "--reset-data-state" in line


def test_a_checkpoint_keeps_only_the_tokenizer_files_of_a_model_folder(shard_dataset, tmp_path):
    dataset, model_file = shard_dataset
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    shutil.copy2(model_file, folder / model_file.name)
    (folder / "config.json").write_text('{"model_type": "qwen3"}')
    (folder / ".env").write_text("HF_TOKEN=hf_secret")
    result = subprocess.run(
        [sys.executable, "-m", "megatron_infimed.cli.train", *shard_flags(dataset, folder), "--seq-length", "192",
         "--train-iters", "1", "--save", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=240, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ckpt" / "iter_0000001" / "tokenizer").iterdir()) == [model_file.name]


def test_a_seq_length_below_every_sample_fails_with_the_counts_instead_of_hanging(shard_dataset, tmp_path):
    dataset, tokenizer = shard_dataset
    result = subprocess.run(
        [sys.executable, "-m", "megatron_infimed.cli.train", *shard_flags(dataset, tokenizer), "--seq-length", "6",
         "--train-iters", "2"],
        capture_output=True, text=True, timeout=240, env=_env())
    assert result.returncode == 2
    [line] = error_lines(result)
    assert "no stream can produce a sample" in line and "longer than the 6-token pack capacity" in line
    assert "Traceback" not in result.stderr
