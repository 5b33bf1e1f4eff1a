"""tools/gpu_check.sh's dry path (no GPU here): argument checks, wheel discovery, the import
preflight, and the real training loop in bf16 on the CPU, read back from its metrics.jsonl and
recorded as the GPU path records it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_infimed.bench.gpu_check import main, missing_modules

pytestmark = pytest.mark.slow  # runs tools/gpu_check.sh in a bash subprocess (~15 s for the dry path)

REPO = Path(__file__).resolve().parents[2]


def run_script(tmp_path: Path, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def result_json(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"mode"')))


def test_dry_path_trains_the_tiny_preset_in_bf16_and_records_the_loops_figures(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "webdataset-1.0.2-py3-none-any.whl").write_bytes(b"")
    done = run_script(tmp_path, "--dry-run", "--wheels", str(wheels), "--steps", "2", "--peak-tflops", "2",
                      "--append", str(tmp_path / "benchmarks.md"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wheel found:   webdataset-1.0.2-py3-none-any.whl" in done.stdout
    assert "wheel missing: megatron_core-0.16.1-cp312-*.whl" in done.stdout
    assert "gpu_check: preflight: all 16 modules" in done.stdout and "dry path passed" in done.stdout

    result = result_json(done.stdout)
    command = result["train_command"]
    assert command.startswith("infimed-train --preset tiny --mock-data --bf16 ")
    assert "--use-distributed-optimizer" not in command  # one process: nothing to shard
    training = result["training"]
    assert (training["iterations"], training["timed_iterations"]) == (4, 2)  # 2 warm-up + --steps 2
    assert training["tokens_per_s"] > 0 and training["tflops_per_gpu"] > 0 and training["losses_finite"]
    assert training["mfu"] == pytest.approx(training["tflops_per_gpu"] / 2)  # against --peak-tflops 2
    assert result["correct"] and result["attention_error"] < 1e-4

    record = (tmp_path / "benchmarks.md").read_text()
    assert "### GPU check, dry path (CPU)" in record and f"`{command}`" in record
    assert f"| tokens/s (real tokens) | {training['tokens_per_s']:,.0f} |" in record
    assert f"| MFU vs the dense bf16 peak, 2 TFLOP/s (target ≥ 45%) | {training['mfu']:.1%} |" in record


def test_a_missing_module_is_named_with_its_wheel_before_training_starts(tmp_path):
    shim = tmp_path / "shim" / "webdataset"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError('No module named webdataset', name='webdataset')\n")
    done = run_script(tmp_path, "--dry-run", "--wheels", str(tmp_path), pythonpath=str(tmp_path / "shim"))
    assert done.returncode == 2
    assert "gpu_check: missing module webdataset (carry the wheel webdataset)" in done.stdout
    assert "the training loop" not in done.stdout


def test_preflight_lists_one_line_per_missing_module():
    problems = missing_modules({"json": "stdlib", "no_such_module_here": "no-such-wheel"}, entry=())
    assert len(problems) == 1 and problems[0].startswith(
        "missing module no_such_module_here (carry the wheel no-such-wheel)")


def test_a_failed_training_run_is_recorded_and_fails_the_check(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("iter 1 | ...\ninfimed-train: error: CUDA out of memory\n")
    with pytest.raises(SystemExit, match="a check failed"):
        main(["--dry", "--run-dir", str(tmp_path), "--train-exit-code", "2", "--train-log", str(log),
              "--train-command", "infimed-train --preset tiny", "--append", str(tmp_path / "benchmarks.md")])
    assert "| training run | exit 2, 0 timed of 0 iterations: infimed-train: error: CUDA out of memory |" \
        in (tmp_path / "benchmarks.md").read_text()


def test_a_bad_argument_is_named_and_exits_2(tmp_path):
    done = run_script(tmp_path, "--layers", "40")
    assert done.returncode == 2 and "--layers must be at most 28" in done.stderr
    done = run_script(tmp_path, "--peak-tflops", "fast")
    assert done.returncode == 2 and "--peak-tflops must be a number of TFLOP/s, got 'fast'" in done.stderr
    done = run_script(tmp_path, "--frobnicate")
    assert done.returncode == 2 and "unknown argument '--frobnicate'" in done.stderr
