"""tools/gpu_check.sh's dry path (no GPU here): argument checks, wheel discovery, tiny CPU step."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_dry_path_exits_zero_and_reports_found_and_missing_wheels(tmp_path):
    (tmp_path / "webdataset-1.0.2-py3-none-any.whl").write_bytes(b"")
    done = run_script("--dry-run", "--wheels", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wheel found:   webdataset-1.0.2-py3-none-any.whl" in done.stdout
    assert "wheel missing: megatron_core-0.16.1-cp312-*.whl" in done.stdout
    assert "wheel missing: braceexpand-*.whl" in done.stdout
    assert '"correct": true' in done.stdout and "dry path passed" in done.stdout


def test_a_bad_argument_is_named_and_exits_2():
    done = run_script("--layers", "40")
    assert done.returncode == 2 and "--layers must be at most 28" in done.stderr
    done = run_script("--frobnicate")
    assert done.returncode == 2 and "unknown argument '--frobnicate'" in done.stderr
