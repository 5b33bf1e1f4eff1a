"""The launch scripts as shell code: shellcheck clean, SLURM headers sbatch will read, the srun
call they build, the launcher's own refusals, and the trainer's refusal of a missing previous
stage reaching the user through torchrun."""

import json
import re
import shutil
import subprocess

import pytest
from launch_site import LAUNCH, PARALLEL_VARIABLES, REPO

STAGE_SCRIPTS = ["pretrain.sh", "stage1.sh", "stage2.sh", "stage3.sh"]
SHELL_SCRIPTS = ["common.sh", "node.sh", *STAGE_SCRIPTS]


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run(["shellcheck", "-x", *(f"launch/{s}" for s in SHELL_SCRIPTS)],
                            cwd=LAUNCH.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_sbatch_header_asks_for_whole_8_gpu_nodes_and_a_warning_before_the_limit(script):
    lines = (LAUNCH / script).read_text().splitlines()
    # sbatch stops reading #SBATCH lines at the first command.
    header = [ln for ln in lines[:lines.index("set -euo pipefail")] if ln.startswith("#SBATCH")]
    options = dict(ln.removeprefix("#SBATCH ").partition("=")[::2] for ln in header)
    assert options["--job-name"] == f"infimed-{script.removesuffix('.sh')}"
    assert int(options["--nodes"]) >= 1
    assert options["--ntasks-per-node"] == "1" and options["--gpus-per-node"] == "8"
    assert "--exclusive" in options and "--requeue" in options
    assert re.fullmatch(r"\d+:\d\d:\d\d", options["--time"])
    assert options["--signal"] == "B:USR1@120"
    assert "%j" in options["--output"]


def test_a_stage_without_its_previous_checkpoint_stops_before_training(site):
    result = site.run("stage3", slurm=False)
    # The trainer refuses (exit 2) before any process group starts; torchrun then fails with 1.
    assert result.returncode != 0
    assert (f"infimed-train: error: --pretrained-checkpoint {site.ckpt_root / 'stage2'} holds no checkpoint "
            f"(no latest_checkpointed_iteration.txt): train the stage that writes it first") in result.stderr
    assert not (site.run_root / "stage3" / "metrics.jsonl").exists()
    assert not (site.ckpt_root / "stage3").exists()


def test_an_explicit_pretrained_checkpoint_must_exist_and_relative_is_from_the_working_folder(site):
    result = site.run("stage1", slurm=False, PRETRAINED_CHECKPOINT="nowhere")
    assert result.returncode != 0
    assert f"infimed-train: error: --pretrained-checkpoint {site.root / 'nowhere'} holds no checkpoint" in result.stderr


def test_several_nodes_outside_slurm_are_refused(site):
    result = site.run("pretrain", slurm=False, NODES="2")
    assert result.returncode == 2
    assert "NODES=2 needs a SLURM job" in result.stderr


def test_an_unknown_preset_names_the_missing_config(site):
    result = site.run("pretrain", slurm=False, PRESET="infimed-70b")
    assert result.returncode == 2
    assert "examples/infimed-70b/pretrain.yaml not found" in result.stderr


def srun_call(site, stage="pretrain", *flags, **env) -> str:
    """The srun command line a SLURM job would run (the fake srun only records it)."""
    result = site.run(stage, *flags, slurm=True, FAKE_SRUN_DRY="1", **env)
    assert result.returncode == 0, result.stderr
    calls = [c for c in site.slurm_calls() if c.startswith("srun ")]
    assert len(calls) == 1, calls
    return calls[0]


def test_a_later_stage_starts_from_the_previous_stage_under_ckpt_root(site):
    call = srun_call(site, "stage2")
    assert call.endswith(f"--run-dir {site.run_root}/stage2 --pretrained-checkpoint {site.ckpt_root}/stage1")


def test_pretrain_keeps_the_pretrained_checkpoint_its_config_names(site):
    assert "--pretrained-checkpoint" not in srun_call(site, "pretrain")


def test_pretrained_checkpoint_replaces_the_previous_stage(site):
    call = srun_call(site, "stage2", PRETRAINED_CHECKPOINT="/lustre/other-stage1")
    assert call.endswith("--pretrained-checkpoint /lustre/other-stage1")
    assert call.count("--pretrained-checkpoint") == 1


def test_container_image_runs_the_task_in_it_with_every_root_mounted(site):
    call = srun_call(site, CONTAINER_IMAGE="nvcr.io#nvidia/pytorch:25.01-py3")
    assert "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" in call
    # The roots lie inside the working folder: one mount covers them.
    assert f"--container-mounts={site.root}:{site.root},{REPO}:{REPO} " in call
    assert f"--container-workdir={site.root}" in call


def test_container_mounts_can_be_given_explicitly(site):
    call = srun_call(site, CONTAINER_IMAGE="img.sqsh", CONTAINER_MOUNTS="/lustre:/lustre")
    assert "--container-mounts=/lustre:/lustre " in call


def test_parallel_sizes_extra_args_and_script_arguments_reach_the_trainer_in_order(site):
    call = srun_call(site, "pretrain", "--seed", "9", TP="2", PP="2", EXTRA_ARGS="--lr 1.0e-4 --seed 7")
    assert "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2" in call
    # Script arguments come last, so they win over EXTRA_ARGS.
    assert call.endswith("--lr 1.0e-4 --seed 7 --seed 9")


@pytest.mark.parametrize("variable,value,flags", [
    ("TP", "2", "--tensor-model-parallel-size 2"),
    ("PP", "2", "--pipeline-model-parallel-size 2"),
    ("CP", "2", "--context-parallel-size 2"),
    ("SP", "1", "--sequence-parallel"),
    ("SP", "0", "--no-sequence-parallel"),  # turns off a config's sequence_parallel: true (TP=1 on infimed-4b)
    ("DIST_OPT", "1", "--use-distributed-optimizer"),
    ("DIST_OPT", "0", "--no-use-distributed-optimizer"),
])
def test_each_parallelism_variable_adds_exactly_its_trainer_flag(site, variable, value, flags):
    call = srun_call(site, "pretrain", **{variable: value})
    assert call.endswith(f"--run-dir {site.run_root}/pretrain {flags}")


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_unset_or_empty_parallelism_variables_leave_the_config_in_charge(site, value):
    env = {} if value is None else dict.fromkeys(PARALLEL_VARIABLES, value)
    call = srun_call(site, "pretrain", **env)
    assert call.endswith(f"--run-dir {site.run_root}/pretrain")


@pytest.mark.parametrize("variable,flag", [("SP", "sequence-parallel"), ("DIST_OPT", "use-distributed-optimizer")])
def test_a_switch_other_than_0_or_1_is_refused_by_name(site, variable, flag):
    result = site.run("pretrain", slurm=True, FAKE_SRUN_DRY="1", **{variable: "yes"})
    assert result.returncode == 2
    assert f"launch[pretrain]: error: {variable}=yes: set it to 1 (--{flag}) or 0 (--no-{flag})" in result.stderr
    assert site.slurm_calls() == []


def test_parallelism_variables_reach_the_trainer_which_plans_that_layout(site):
    # A dry run through node.sh and torchrun: the trainer itself parses the flags the variables add.
    result = site.run("pretrain", "--dry-run", slurm=False, TP="2", CP="2", SP="1", DIST_OPT="1")
    assert result.returncode == 0, result.stderr[-4000:]
    torchrun_line = next(ln for ln in result.stdout.splitlines() if "-m megatron_infimed.cli.train" in ln)
    assert torchrun_line.rstrip().endswith("--tensor-model-parallel-size 2 --context-parallel-size 2 "
                                           "--sequence-parallel --use-distributed-optimizer --dry-run")
    report = json.loads(next(ln for ln in result.stdout.splitlines() if ln.startswith("{")))
    layout = report["memory"]["layout"]
    assert (layout["tp"], layout["cp"], layout["sequence_parallel"], layout["distributed_optimizer"]) == \
        (2, 2, True, True)
    assert report["effective"]["pad_multiple"] == 4  # 2 × CP


def test_nodes_and_srun_args_shape_the_srun_call(site):
    call = srun_call(site, NODES="4", SRUN_ARGS="--cpu-bind=none")
    assert call.startswith("srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --kill-on-bad-exit=1 --cpu-bind=none ")


def test_a_slurm_job_trains_the_1_7b_preset_unless_told_otherwise(site):
    result = site.run("pretrain", slurm=True, FAKE_SRUN_DRY="1", PRESET="")
    assert f"config {REPO / 'examples/infimed-1.7b/pretrain.yaml'}" in result.stdout


def test_sbatch_spool_copy_finds_common_sh_from_the_submit_folder(site):
    # sbatch runs a copy of the script from its spool folder, away from the repository.
    spool = site.root / "spool"
    spool.mkdir()
    shutil.copy(LAUNCH / "stage2.sh", spool / "slurm_script")
    result = subprocess.run(["bash", str(spool / "slurm_script")], cwd=site.root, capture_output=True, text=True,
                            env=site.env(slurm=True, SLURM_SUBMIT_DIR=str(REPO), FAKE_SRUN_DRY="1"))
    # An srun call of the repository's node.sh proves common.sh was found and sourced.
    assert result.returncode == 0, result.stderr
    assert any(c.startswith("srun ") and f" bash {REPO}/launch/node.sh --save " in c for c in site.slurm_calls())


def test_relative_roots_are_made_absolute_for_every_node(site):
    call = srun_call(site, CKPT_ROOT="ckpt", RUN_ROOT="runs-here")
    ckpt, runs = site.root / "ckpt", site.root / "runs-here"
    assert f"--save {ckpt}/pretrain --load {ckpt}/pretrain --run-dir {runs}/pretrain" in call
