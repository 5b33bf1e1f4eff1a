"""The per-stage example configs: every file loads through the trainer's own parser, and the
stages follow the recipe: pretrain aligns a projector between frozen encoders on few image
tokens, stage1-3 fine-tune from the previous stage's weights, stage3 blends medical, shifted
and replayed general data. Their inputs sit under ${DATA_ROOT} and ${CKPT_ROOT}, whose defaults
are the layout of docs/launch.md; the outputs are the launcher's to set. Each fits an 80 GB GPU
in the dry run's memory plan on the nodes its stage script asks for."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from megatron_infimed.cli.train import main
from megatron_infimed.config.flags import flat_name, load_config
from megatron_infimed.config.presets import get_preset
from megatron_infimed.config.run import SECTIONS, RunConfig
from megatron_infimed.model.token_reduction import tokens_per_image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PRESETS = ("tiny", "infimed-1.7b", "infimed-4b")
STAGES = ("pretrain", "stage1", "stage2", "stage3")
BIG = ("infimed-1.7b", "infimed-4b")
ALL = [(preset, stage) for preset in PRESETS for stage in STAGES]
GPUS_PER_NODE = 8


def path_of(preset: str, stage: str) -> Path:
    return EXAMPLES / preset / f"{stage}.yaml"


def load(preset: str, stage: str) -> RunConfig:
    config, _ = load_config(["--config", str(path_of(preset, stage))])
    return config


def sbatch_nodes(stage: str) -> int:
    """The nodes launch/STAGE.sh asks sbatch for."""
    header = (REPO / "launch" / f"{stage}.sh").read_text()
    return int(re.search(r"^#SBATCH --nodes=(\d+)$", header, re.MULTILINE).group(1))


def dry_run_memory(preset: str, stage: str, world_size: int) -> dict:
    """``infimed-train --config ... --dry-run --world-size N``'s memory plan (80 GB GPUs, the default)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--config", str(path_of(preset, stage)), "--dry-run", "--world-size", str(world_size)]) == 0
    return json.loads(out.getvalue())["memory"]


@pytest.fixture(autouse=True)
def default_roots(monkeypatch):
    """The configs as read without the launcher: DATA_ROOT and CKPT_ROOT unset, their defaults apply."""
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.delenv("CKPT_ROOT", raising=False)


def test_the_examples_folder_holds_exactly_the_twelve_stage_configs():
    found = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml"))
    assert found == sorted(f"{preset}/{stage}.yaml" for preset, stage in ALL)


@pytest.mark.parametrize("preset,stage", ALL)
def test_yaml_keys_are_flat_option_names_or_sections(preset, stage):
    keys = set(yaml.safe_load(path_of(preset, stage).read_text()))
    known = {flat_name(s, f) for s, cls in SECTIONS.items() for f in cls.__dataclass_fields__} | set(SECTIONS)
    assert keys <= known, f"not run options: {sorted(keys - known)}"


@pytest.mark.parametrize("preset,stage", ALL)
def test_config_loads_with_its_preset_and_a_loader_data_section(preset, stage):
    config = load(preset, stage)
    assert config.model.preset == preset
    data = config.data  # the loader's DataConfig: unknown keys raised while loading
    assert len(data.paths) == len(data.weights)
    assert all(p.startswith("data/prepared/") for p in data.paths)


@pytest.mark.parametrize("preset,stage", ALL)
def test_numbers_are_numbers_not_strings(preset, stage):
    # YAML 1.1 reads `1e-3` as a string; the configs must write `1.0e-3`.
    config = load(preset, stage)
    assert all(isinstance(v, float) for v in (config.optim.lr, config.optim.min_lr))
    assert all(isinstance(v, int)
               for v in (config.optim.train_iters, config.optim.lr_warmup_iters, config.batch.seq_length))


@pytest.mark.parametrize("preset,stage", ALL)
def test_schedule_is_warmup_then_cosine_to_a_lower_floor(preset, stage):
    config = load(preset, stage)
    assert config.optim.lr_decay_style == "cosine"
    assert 0 < config.optim.lr_warmup_iters < config.optim.train_iters
    assert 0 < config.optim.min_lr < config.optim.lr


@pytest.mark.parametrize("preset", PRESETS)
def test_learning_rate_falls_from_stage_to_stage(preset):
    rates = [load(preset, stage).optim.lr for stage in STAGES]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[1], rates


@pytest.mark.parametrize("preset", PRESETS)
def test_pretrain_trains_only_the_projector(preset):
    config = load(preset, "pretrain")
    model = config.model
    assert (model.freeze_vision, model.freeze_projector, model.freeze_language) == (True, False, True)


@pytest.mark.parametrize("preset", PRESETS)
def test_stage1_unfreezes_language_and_keeps_vision_frozen(preset):
    config = load(preset, "stage1")
    model = config.model
    assert (model.freeze_vision, model.freeze_projector, model.freeze_language) == (True, False, False)


@pytest.mark.parametrize("preset,stage", [(p, s) for p in PRESETS for s in ("stage2", "stage3")])
def test_medical_stages_train_every_part(preset, stage):
    config = load(preset, stage)
    assert not (config.model.freeze_vision or config.model.freeze_projector or config.model.freeze_language)


@pytest.mark.parametrize("preset", BIG)
def test_big_pretrain_pools_to_144_image_tokens(preset):
    config = load(preset, "pretrain")
    assert config.model.overrides == {"reduction.kind": "pool", "reduction.pooled_grid": 12}
    assert tokens_per_image(get_preset(preset).with_overrides(config.model.overrides)) == 144


def test_tiny_pretrain_keeps_its_4x4_pooling():
    config = load("tiny", "pretrain")
    assert tokens_per_image(get_preset("tiny").with_overrides(config.model.overrides)) == 16


@pytest.mark.parametrize("preset", PRESETS)
def test_image_tokens_never_shrink_after_pretrain(preset):
    counts = [tokens_per_image(get_preset(preset).with_overrides(load(preset, s).model.overrides)) for s in STAGES]
    assert counts == sorted(counts), counts


@pytest.mark.parametrize("preset,stage", ALL)
def test_sequence_holds_several_images_and_fits_the_model(preset, stage):
    config = load(preset, stage)
    model = get_preset(preset).with_overrides(config.model.overrides)
    assert 2 * tokens_per_image(model) < config.batch.seq_length <= model.language.max_position_embeddings


def test_pretrain_blends_caption_data():
    data = load("infimed-4b", "pretrain").data
    assert all("caption" in p for p in data.paths)


@pytest.mark.parametrize("preset,stage,dataset", [(p, s, d) for p in PRESETS
                                                  for s, d in (("stage1", "general"), ("stage2", "medical"))])
def test_instruction_stages_train_on_their_own_dataset(preset, stage, dataset):
    assert load(preset, stage).data.paths == (f"data/prepared/{dataset}",)


@pytest.mark.parametrize("preset", PRESETS)
def test_stage3_blends_medical_shifted_and_general_replay(preset):
    data = load(preset, "stage3").data
    blend = dict(zip(data.paths, data.weights))
    assert blend == {"data/prepared/medical": 0.5, "data/prepared/shifted": 0.3, "data/prepared/general": 0.2}


@pytest.mark.parametrize("preset,stage,previous", [(p, s, prev) for p in PRESETS for s, prev in
                                                   (("stage1", "pretrain"), ("stage2", "stage1"),
                                                    ("stage3", "stage2"))])
def test_each_stage_starts_from_the_previous_stage_checkpoint(preset, stage, previous):
    assert load(preset, stage).checkpoint.pretrained_checkpoint == load(preset, previous).checkpoint.save


@pytest.mark.parametrize("preset", BIG)
def test_big_pretrain_starts_from_imported_hugging_face_weights(preset):
    assert load(preset, "pretrain").checkpoint.pretrained_checkpoint == f"checkpoints/{preset}/hf-init"


def test_tiny_pretrain_starts_from_random_init():
    assert load("tiny", "pretrain").checkpoint.pretrained_checkpoint is None


@pytest.mark.parametrize("preset,stage", ALL)
def test_rerunning_a_stage_resumes_its_own_checkpoint(preset, stage):
    config = load(preset, stage)
    assert config.checkpoint.load == config.checkpoint.save == f"checkpoints/{preset}/{stage}"
    assert config.logging.run_dir == f"runs/{preset}/{stage}"


@pytest.mark.parametrize("preset,stage", ALL)
def test_precision_is_bf16_on_gpu_presets_and_fp32_for_tiny(preset, stage):
    assert load(preset, stage).model.bf16 is (preset in BIG)


@pytest.mark.parametrize("preset,tp", [("tiny", 1), ("infimed-1.7b", 1), ("infimed-4b", 2)])
def test_tensor_parallel_size_per_preset(preset, tp):
    assert {load(preset, s).parallel.tensor_model_parallel_size for s in STAGES} == {tp}
    assert {load(preset, s).parallel.pipeline_model_parallel_size for s in STAGES} == {1}
    assert {load(preset, s).parallel.context_parallel_size for s in STAGES} == {1}


@pytest.mark.parametrize("preset,sequence_parallel", [("tiny", False), ("infimed-1.7b", False), ("infimed-4b", True)])
def test_the_tensor_parallel_preset_also_splits_the_sequence(preset, sequence_parallel):
    # TP2 + SP: the decoder's norm and residual activations split over the TP pair as well.
    assert {load(preset, s).parallel.sequence_parallel for s in STAGES} == {sequence_parallel}


@pytest.mark.parametrize("preset,distributed", [("tiny", False), ("infimed-1.7b", True), ("infimed-4b", True)])
def test_gpu_presets_shard_the_optimizer_state_over_data_parallel_ranks(preset, distributed):
    # tiny runs one CPU process: nothing to shard over.
    assert {load(preset, s).parallel.use_distributed_optimizer for s in STAGES} == {distributed}


@pytest.mark.parametrize("preset,stage,nodes", [(p, s, n) for p in BIG for s in STAGES
                                               for n in sorted({1, sbatch_nodes(s)})])
def test_every_gpu_config_fits_80_gb_on_one_node_and_on_its_stage_scripts_nodes(preset, stage, nodes):
    # One node is the tightest: the distributed optimizer shards over the fewest ranks there.
    memory = dry_run_memory(preset, stage, nodes * GPUS_PER_NODE)
    assert memory["gpu_memory_gb"] == 80 and memory["layout"]["world_size"] == nodes * GPUS_PER_NODE
    assert memory["fits"], f"{preset}/{stage} plans {memory['total_gb']} GB per GPU on {nodes} node(s)"


@pytest.mark.parametrize("stage", STAGES)
def test_tiny_configs_fit_in_one_process(stage):
    memory = dry_run_memory("tiny", stage, 1)
    assert memory["fits"] and memory["total_gb"] < 1


@pytest.mark.parametrize("preset,stage", [(p, s) for p in BIG for s in STAGES])
def test_global_batch_splits_evenly_over_one_to_sixteen_h100_nodes(preset, stage):
    config = load(preset, stage)
    model_parallel = config.parallel.tensor_model_parallel_size * config.parallel.pipeline_model_parallel_size
    for nodes in (1, 2, 4, 8, 16):
        data_parallel = nodes * GPUS_PER_NODE // model_parallel
        assert config.batch.global_batch_size % (config.batch.micro_batch_size * data_parallel) == 0, nodes


@pytest.mark.parametrize("preset", PRESETS)
def test_data_root_moves_every_data_path_and_keeps_the_blend(preset, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/lustre/prepared")
    data = load(preset, "stage3").data
    assert dict(zip(data.paths, data.weights)) == {"/lustre/prepared/medical": 0.5, "/lustre/prepared/shifted": 0.3,
                                                   "/lustre/prepared/general": 0.2}


def test_data_root_moves_the_tiny_tokenizer(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/lustre/prepared")
    assert load("tiny", "stage1").data.tokenizer == "/lustre/prepared/tokenizer.model"


@pytest.mark.parametrize("preset", BIG)
def test_ckpt_root_moves_the_imported_weights_and_their_tokenizer(preset, monkeypatch):
    monkeypatch.setenv("CKPT_ROOT", "/lustre/ckpt")
    config = load(preset, "pretrain")
    assert config.checkpoint.pretrained_checkpoint == "/lustre/ckpt/hf-init"
    assert config.data.tokenizer == "/lustre/ckpt/hf-init/iter_0000000/tokenizer"


@pytest.mark.parametrize("preset,stage,previous", [(p, "stage2", "stage1") for p in PRESETS])
def test_ckpt_root_moves_the_previous_stage_but_not_the_outputs(preset, stage, previous, monkeypatch):
    monkeypatch.setenv("CKPT_ROOT", "/lustre/ckpt")
    monkeypatch.setenv("DATA_ROOT", "/lustre/prepared")
    config = load(preset, stage)
    assert config.checkpoint.pretrained_checkpoint == f"/lustre/ckpt/{previous}"
    # Outputs stay the config's placeholders: the launcher passes --save, --load and --run-dir.
    assert config.checkpoint.save == f"checkpoints/{preset}/{stage}"
    assert config.logging.run_dir == f"runs/{preset}/{stage}"


@pytest.mark.parametrize("preset,stage", ALL)
def test_every_input_sits_under_data_root_or_ckpt_root(preset, stage, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data-root")
    monkeypatch.setenv("CKPT_ROOT", "/ckpt-root")
    config = load(preset, stage)
    inputs = [*config.data.paths, config.data.tokenizer, config.checkpoint.pretrained_checkpoint]
    assert all(p.startswith(("/data-root/", "/ckpt-root/")) for p in inputs if p is not None), inputs
