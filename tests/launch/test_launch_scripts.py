"""launch/*.sh end to end on CPU with the tiny preset and mock data: pretrain then stage1 under a
simulated SLURM job (fake srun/scontrol), SIGUSR1 to the batch shell saves and requeues, SIGTERM
saves and fails the job, a rerun resumes, and plain `bash` outside SLURM starts a single-node
torchrun (stage2 from stage1).

The runs build on each other (module-scoped fixtures), as the stages do on a cluster."""

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from launch_site import CPU_FLAGS, JOB_ID, LaunchSite

pytestmark = pytest.mark.slow
INTERRUPTED_TRAIN_ITERS = 10_000  # never reached: SIGUSR1 stops the run


@dataclass
class Run:
    returncode: int
    output: str
    slurm_calls: list[str]  # srun/scontrol calls made by this run

    def check(self) -> "Run":
        assert self.returncode == 0, self.output[-4000:]
        return self


def latest(ckpt: Path) -> int:
    return int((ckpt / "latest_checkpointed_iteration.txt").read_text())


def iterations(run_dir: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def saved_run_config(ckpt: Path) -> dict:
    return json.loads((ckpt / f"iter_{latest(ckpt):07d}" / "run_config.json").read_text())


def run_stage(site: LaunchSite, stage: str, *flags: str, slurm: bool) -> Run:
    before = len(site.slurm_calls())
    result = site.run(stage, *CPU_FLAGS, *flags, slurm=slurm)
    return Run(result.returncode, result.stdout + result.stderr, site.slurm_calls()[before:]).check()


@pytest.fixture(scope="module")
def pretrain(module_site) -> Run:
    return run_stage(module_site, "pretrain", "--train-iters", "2", slurm=True)


def interrupt(site: LaunchSite, stage: str, signum: signal.Signals) -> Run:
    """``stage`` under SLURM, started for many iterations, with ``signum`` sent to the batch shell
    once the first iteration is logged."""
    before = len(site.slurm_calls())
    process = subprocess.Popen(site.command(stage, *CPU_FLAGS, "--train-iters", str(INTERRUPTED_TRAIN_ITERS)),
                               cwd=site.root, env=site.env(slurm=True), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics = site.run_root / stage / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None and not metrics.exists():
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signum)
    output, _ = process.communicate(timeout=180)
    return Run(process.returncode, output, site.slurm_calls()[before:])


@pytest.fixture(scope="module")
def stage1_interrupted(module_site, pretrain) -> Run:
    """stage1 stopped by SIGUSR1 to the launcher, as `--signal=B:USR1` does before the time limit."""
    return interrupt(module_site, "stage1", signal.SIGUSR1).check()


@pytest.fixture(scope="module")
def stage1_rerun(module_site, stage1_interrupted) -> tuple[int, Run]:
    """The requeued job: the same script again, now asked to stop two iterations later."""
    stopped_at = latest(module_site.ckpt_root / "stage1")
    return stopped_at, run_stage(module_site, "stage1", "--train-iters", str(stopped_at + 2), slurm=True)


@pytest.fixture(scope="module")
def stage2_local(module_site, stage1_rerun) -> Run:
    return run_stage(module_site, "stage2", "--train-iters", "1", slurm=False)


def test_pretrain_writes_its_checkpoint_and_metrics_under_the_roots(module_site, pretrain):
    assert latest(module_site.ckpt_root / "pretrain") == 2
    assert iterations(module_site.run_root / "pretrain") == [1, 2]


def test_slurm_path_runs_one_task_per_node_through_srun(pretrain):
    srun_calls = [c for c in pretrain.slurm_calls if c.startswith("srun ")]
    assert len(srun_calls) == 1
    assert "--nodes=1 --ntasks=1 --ntasks-per-node=1" in srun_calls[0]
    assert "launch/node.sh" in srun_calls[0]


def test_slurm_path_rendezvous_on_the_first_host_of_the_allocation(pretrain):
    # The endpoint comes from megatron_infimed.runtime.rendezvous on the node, not from scontrol.
    assert not any(c.startswith("scontrol show") for c in pretrain.slurm_calls)
    assert re.search(rf"torch.distributed.run --nnodes 1 --rdzv-id {JOB_ID} --rdzv-backend c10d "
                     r"--rdzv-endpoint localhost:\d+ --nproc-per-node 1 -m megatron_infimed.cli.train",
                     pretrain.output)


def test_the_trainer_gets_the_config_then_the_launcher_flags(module_site, pretrain):
    # No rebased copies of the config's paths in between: the config expands ${DATA_ROOT} itself.
    assert re.search(r"-m megatron_infimed.cli.train --config \S+/examples/tiny/pretrain.yaml "
                     rf"--save {module_site.ckpt_root}/pretrain --load ", pretrain.output)


def test_data_root_rebases_the_config_inputs(module_site, pretrain):
    run_config = saved_run_config(module_site.ckpt_root / "pretrain")
    assert run_config["data"]["paths"] == [str(module_site.data_root / "general-caption"),
                                           str(module_site.data_root / "medical-caption")]
    assert run_config["data"]["weights"] == [0.5, 0.5]
    assert run_config["data"]["tokenizer"] == str(module_site.data_root / "tokenizer.model")


def test_stage1_starts_from_the_pretrain_checkpoint(module_site, stage1_interrupted):
    run_config = saved_run_config(module_site.ckpt_root / "stage1")
    assert run_config["checkpoint"]["pretrained_checkpoint"] == str(module_site.ckpt_root / "pretrain")
    # stage1's own config
    assert (run_config["model"]["freeze_vision"], run_config["model"]["freeze_language"]) == (True, False)
    assert (f"starting a new run from the weights of iteration 2 of {module_site.ckpt_root / 'pretrain'}"
            in stage1_interrupted.output)


def test_sigusr1_to_the_batch_shell_saves_a_checkpoint_and_exits_cleanly(module_site, stage1_interrupted):
    stopped_at = latest(module_site.ckpt_root / "stage1")
    assert 1 <= stopped_at < INTERRUPTED_TRAIN_ITERS
    assert "caught SIGUSR1" in stage1_interrupted.output
    # The trainer exits 128 + 10 after its save; the launcher still ends the job with 0 (Run.check).
    assert (f"infimed-train: stopped by SIGUSR1 after iteration {stopped_at}: saved iteration {stopped_at} to "
            f"{module_site.ckpt_root / 'stage1'}") in stage1_interrupted.output


def test_sigusr1_inside_slurm_requeues_the_job(stage1_interrupted):
    assert stage1_interrupted.slurm_calls[-1] == f"scontrol requeue {JOB_ID}"


def test_sigterm_saves_but_fails_the_job_and_does_not_requeue_it(site):
    stopped = interrupt(site, "pretrain", signal.SIGTERM)
    # The trainer exits 143 after its save; torchrun then raises SignalException and fails (1).
    assert stopped.returncode != 0
    assert f"infimed-train: stopped by SIGTERM after iteration {latest(site.ckpt_root / 'pretrain')}" in stopped.output
    assert not any(c.startswith("scontrol") for c in stopped.slurm_calls)


def test_rerunning_stage1_resumes_after_the_saved_iteration(module_site, stage1_rerun):
    stopped_at, rerun = stage1_rerun
    assert f"infimed-train: resuming from iteration {stopped_at} of {module_site.ckpt_root / 'stage1'}" in rerun.output
    assert iterations(module_site.run_root / "stage1")[-2:] == [stopped_at + 1, stopped_at + 2]
    assert latest(module_site.ckpt_root / "stage1") == stopped_at + 2


def test_a_finished_run_is_not_requeued(stage1_rerun):
    _, rerun = stage1_rerun
    assert not any(c.startswith("scontrol requeue") for c in rerun.slurm_calls)


def test_outside_slurm_a_single_node_torchrun_runs_without_srun(stage2_local):
    assert "--standalone --nnodes 1 --nproc-per-node 1 -m megatron_infimed.cli.train" in stage2_local.output
    assert stage2_local.slurm_calls == []


def test_stage2_outside_slurm_starts_from_stage1_and_saves_its_own(module_site, stage2_local):
    assert latest(module_site.ckpt_root / "stage2") == 1
    run_config = saved_run_config(module_site.ckpt_root / "stage2")
    assert run_config["checkpoint"]["pretrained_checkpoint"] == str(module_site.ckpt_root / "stage1")
