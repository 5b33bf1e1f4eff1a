"""Fixtures for training tests."""

import pytest
from trainrun import read_metrics, torchrun


@pytest.fixture()
def train_run(tmp_path):
    """``train_run(name, nproc, *flags)`` → metrics records of that run."""

    def run(name: str, nproc: int, *flags: str) -> list[dict]:
        run_dir = tmp_path / name
        torchrun(nproc, *flags, "--run-dir", str(run_dir))
        return read_metrics(run_dir)

    return run
