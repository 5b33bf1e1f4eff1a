"""The memory planner (training/memory.py): its weight, gradient and optimizer bytes are the bytes
the real training builders allocate for the tiny preset, and its activation terms follow the
documented formulas (Korthikanti et al. 2022, adapted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainrun import free_port

from megatron_infimed.cli.train import main
from megatron_infimed.config.flags import load_config, with_options
from megatron_infimed.config.presets import PRESETS, get_preset
from megatron_infimed.config.run import RunConfig
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.training.dry_run import count
from megatron_infimed.training.memory import (
    GB,
    Layout,
    images_per_micro_batch,
    in_flight,
    language_layer_bytes,
    plan_memory,
    stage_activation_bytes,
    stage_params,
    vision_layer_bytes,
)
from megatron_infimed.training.setup import build_model_chunks, build_optimizer, freeze, model_config_for, wrap_ddp

REPO = Path(__file__).resolve().parents[2]


def config_with(**flat) -> RunConfig:
    return with_options(RunConfig(), **flat)


def allocated_bytes(model: list, optimizer) -> dict[str, int]:
    """What the builders allocated: unique parameters, DDP gradient buffers, and the optimizer's fp32
    main weights and Adam moments (torch's per-tensor ``step`` counters left out: TE's FusedAdam has none)."""
    params = {id(p): p for chunk in model for p in chunk.parameters()}.values()
    grads = sum(b.grad_data.numel() * b.grad_data.element_size() for chunk in model for b in chunk.buffers)
    state = 0
    for inner in optimizer.chained_optimizers:
        mains = getattr(inner, "fp32_from_float16_groups", None) or getattr(inner, "shard_fp32_from_float16_groups", [])
        state += sum(t.numel() * t.element_size() for group in mains for t in group)
        state += sum(t.numel() * t.element_size() for s in inner.optimizer.state.values()
                     for key, t in s.items() if key in ("exp_avg", "exp_avg_sq"))
    return {"weights": sum(p.numel() * p.element_size() for p in params), "grads": grads, "optimizer": state}


def build_and_step(config: RunConfig):
    """The trainer's own order (training/run.py): chunks, freezing, DDP, optimizer; one step so
    Adam's moments exist."""
    chunks = build_model_chunks(config, model_config_for(config))
    freeze(chunks, config.model)
    model = wrap_ddp(chunks, config)
    optimizer, _ = build_optimizer(model, config)
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("flags", [{}, {"bf16": True}, {"bf16": True, "freeze_vision": True},
                                   {"freeze_vision": True, "freeze_language": True}],
                         ids=["fp32", "bf16", "bf16-frozen-vision", "fp32-projector-only"])
def test_weight_grad_and_optimizer_bytes_equal_what_the_builders_allocate(mcore_world, flags):
    config = config_with(**flags)
    model, optimizer = build_and_step(config)
    planned = plan_memory(config, model_config_for(config))["bytes"]
    assert {k: planned[k] for k in ("weights", "grads", "optimizer")} == allocated_bytes(model, optimizer)
    # Without the distributed optimizer megatron-core pads nothing, so the comparison is exact.
    assert all(b.numel == b.numel_unpadded for chunk in model for b in chunk.buffers)


def test_the_distributed_optimizer_shards_main_weights_and_moments_and_pads_only_its_buffers(mcore_world):
    config = config_with(bf16=True, use_distributed_optimizer=True)
    model, optimizer = build_and_step(config)
    planned, allocated = plan_memory(config, model_config_for(config))["bytes"], allocated_bytes(model, optimizer)
    assert planned["weights"] == allocated["weights"]
    assert planned["optimizer"] == allocated["optimizer"]  # the padding holds no main weights or moments
    tensors = sum(1 for chunk in model for p in chunk.parameters() if p.requires_grad)
    buckets = sum(len(b.buckets) for chunk in model for b in chunk.buffers)
    padding = allocated["grads"] - planned["grads"]
    assert 0 <= padding < 4 * (64 * tensors + 128 * buckets)  # the bound the module docstring states


# One rank of a torchrun world: what its stage's plan says, and what the builders gave it.
RANK_WORKER = """
import json, sys
import torch
from megatron.core import parallel_state
from megatron_infimed.runtime import distributed
from megatron_infimed.training.memory import Layout, stage_params, state_bytes
from megatron_infimed.training.setup import model_config_for
from test_memory import allocated_bytes, build_and_step, config_with

config = config_with(**json.loads(sys.argv[1]))
distributed.initialize(config.parallel, seed=1)
model, optimizer = build_and_step(config)
layout = Layout.of(config, torch.distributed.get_world_size())
stage = parallel_state.get_pipeline_model_parallel_rank()
planned = state_bytes(stage_params(model_config_for(config), layout, stage), config, layout.data)
# One file per rank: two ranks printing at once interleave their lines.
with open(f"{sys.argv[2]}/rank{torch.distributed.get_rank()}.json", "w") as out:
    json.dump([vars(planned), allocated_bytes(model, optimizer)], out)
distributed.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{"tensor_model_parallel_size": 2, "bf16": True},
                                   {"pipeline_model_parallel_size": 2, "virtual_pipeline_model_parallel_size": 2,
                                    "model_overrides": {"language.num_layers": 4}, "freeze_vision": True}],
                         ids=["tp2-bf16", "pp2-vp2-frozen-vision"])
def test_every_rank_of_a_tp_or_pp_world_allocates_what_its_stage_plan_says(tmp_path, flags):
    worker = tmp_path / "rank_worker.py"
    worker.write_text(RANK_WORKER)
    here = Path(__file__).parent  # test_memory itself, and tests/ for trainrun
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
         str(worker), json.dumps(flags), str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
             "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert len(ranks) == 2, result.stdout[-2000:] + result.stderr[-4000:]
    for planned, allocated in ranks:
        assert planned == allocated


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_planned_parameters_per_part_equal_the_model_built_on_meta(mcore_world, preset):
    config = config_with(preset=preset)
    with torch.device("meta"):
        model = InfiMedModel(get_preset(preset))
    planned = stage_params(get_preset(preset), Layout.of(config), stage=0)
    assert planned == {"vision": count(model.vision_model), "projector": count(model.projector),
                       "language": count(model.language_model)}


def test_tensor_parallelism_splits_matrices_and_vocabulary_but_not_norms():
    config = get_preset("infimed-1.7b")
    whole = stage_params(config, Layout.of(config_with(preset="infimed-1.7b")), 0)["language"]
    split = stage_params(config, Layout.of(config_with(preset="infimed-1.7b", tensor_model_parallel_size=2)), 0)
    lang = config.language
    norms = lang.num_layers * (2 * lang.hidden_size + 2 * lang.kv_channels) + lang.hidden_size
    assert split["language"] == (whole - norms) // 2 + norms


def test_pipeline_stages_hold_their_layers_with_the_embedding_first_and_the_output_layer_last():
    config = get_preset("infimed-1.7b")
    layout = Layout.of(config_with(preset="infimed-1.7b", pipeline_model_parallel_size=2))
    first, last = stage_params(config, layout, 0), stage_params(config, layout, 1)
    lang = config.language
    vocab = lang.vocab_size * lang.hidden_size
    assert first["language"] - vocab == last["language"] - vocab - lang.hidden_size  # 14 layers each
    assert first["vision"] > 0 and last["vision"] == last["projector"] == 0
    # Tied embeddings on one stage are one tensor; across stages the last holds its own copy.
    assert first["language"] + last["language"] == \
        stage_params(config, Layout.of(config_with(preset="infimed-1.7b")), 0)["language"] + vocab


def test_the_first_stage_holds_pp_micro_batches_and_the_last_one():
    layout = Layout.of(config_with(pipeline_model_parallel_size=4, global_batch_size=8), world_size=4)
    assert [in_flight(layout, stage)[0] for stage in range(4)] == [4, 3, 2, 1]
    few = Layout.of(config_with(pipeline_model_parallel_size=4, global_batch_size=2), world_size=4)
    assert in_flight(few, 0)[0] == 2  # never more than the step's micro-batches


def test_interleaving_costs_stage_zero_megatrons_penalty():
    pp, vp = 4, 2
    layout = Layout.of(config_with(pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vp,
                                   global_batch_size=16), world_size=pp)
    chunks, _ = in_flight(layout, 0)
    # chunk forwards × L/(pp·vp) layers = L·(1 + (pp − 1)/(pp·vp))
    assert chunks / (pp * vp) == pytest.approx(1 + (pp - 1) / (pp * vp))


def test_a_decoder_layer_keeps_8h_whole_and_6q_6kv_6f_split_and_sp_splits_it_all():
    lang = get_preset("infimed-1.7b").language
    h, q, kv, f = 2048, 16 * 128, 8 * 128, 6144
    tp1 = Layout.of(config_with(preset="infimed-1.7b"))
    tp2 = Layout.of(config_with(preset="infimed-1.7b", tensor_model_parallel_size=2))
    sp2 = Layout.of(config_with(preset="infimed-1.7b", tensor_model_parallel_size=2, sequence_parallel=True))
    assert not tp2.sequence_parallel and sp2.sequence_parallel  # the config's --sequence-parallel, nothing else
    assert language_layer_bytes(lang, tp1) == 8 * h + 6 * q + 6 * kv + 6 * f
    assert language_layer_bytes(lang, tp2) == 8 * h + (6 * q + 6 * kv + 6 * f) / 2
    assert language_layer_bytes(lang, sp2) == language_layer_bytes(lang, tp1) / 2


def test_sequence_parallelism_splits_the_decoder_and_final_norm_but_not_the_vision_tower():
    # The trainer scatters the decoder's input after the image embeddings are written into it:
    # the ViT runs without sequence parallelism.
    model, base = get_preset("infimed-1.7b"), dict(preset="infimed-1.7b", bf16=True, tensor_model_parallel_size=2)
    tp2, sp2 = config_with(**base), config_with(**base, sequence_parallel=True)
    a, b = (stage_activation_bytes(c, model, Layout.of(c), 0) for c in (tp2, sp2))
    assert vision_layer_bytes(model.vision, Layout.of(sp2)) == vision_layer_bytes(model.vision, Layout.of(tp2))
    assert b["vision"] == a["vision"] > 0 and b["projector"] == a["projector"] > 0
    h, slots = model.language.hidden_size, tp2.batch.micro_batch_slots
    assert a["language"] - b["language"] == model.language.num_layers * slots * 8 * h / 2
    assert a["logits"] - b["logits"] == slots * 4 * h / 2  # the final norm's input and output


def test_the_plan_reads_sequence_parallelism_from_the_config_alone():
    config = config_with(preset="infimed-4b", bf16=True, tensor_model_parallel_size=2, sequence_parallel=True)
    plan = plan_memory(config, get_preset("infimed-4b"), world_size=8)
    assert plan["layout"]["sequence_parallel"] is True
    assert any(note.startswith("sequence parallelism:") for note in plan["assumptions"])
    with pytest.raises(TypeError):
        plan_memory(config, get_preset("infimed-4b"), 8, 80, True)  # no second switch to disagree with it


def test_full_recomputation_keeps_each_layer_input_and_one_layer_to_recompute():
    base = dict(preset="infimed-1.7b", bf16=True, freeze_vision=True, freeze_projector=True)
    none = stage_activation_bytes(config_with(**base), get_preset("infimed-1.7b"), Layout.of(config_with(**base)), 0)
    full_config = config_with(**base, recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    full = stage_activation_bytes(full_config, get_preset("infimed-1.7b"), Layout.of(full_config), 0)
    tokens, layers, h = 1024, 28, 2048
    assert full["language"] == tokens * layers * 2 * h
    assert full["recompute_workspace"] == none["language"] / layers
    assert none["vision"] == none["projector"] == 0  # frozen and first: forward only, nothing kept


def test_selective_recomputation_saves_nothing_with_flash_style_attention():
    base = config_with(preset="infimed-1.7b", bf16=True)
    selective = config_with(preset="infimed-1.7b", bf16=True, recompute_granularity="selective")
    model = get_preset("infimed-1.7b")
    assert stage_activation_bytes(selective, model, Layout.of(selective), 0) == \
        stage_activation_bytes(base, model, Layout.of(base), 0)


def test_context_parallelism_divides_the_decoder_tokens_and_the_images():
    model = get_preset("infimed-1.7b")
    one = config_with(preset="infimed-1.7b", bf16=True, seq_length=8192, transformer_impl="te")
    two = config_with(preset="infimed-1.7b", bf16=True, seq_length=8192, transformer_impl="te", context_parallel_size=2)
    a, b = (stage_activation_bytes(c, model, Layout.of(c), 0) for c in (one, two))
    assert b["language"] == a["language"] / 2 and b["logits"] == a["logits"] / 2
    # Each CP rank runs the vision tower and the projector on its share of the images.
    assert images_per_micro_batch(one, model) % 2 == 0
    assert b["vision"] == a["vision"] / 2 and b["projector"] == a["projector"] / 2


def test_local_layers_under_context_parallelism_also_keep_the_gathered_k_and_v():
    model, base = get_preset("infimed-1.7b"), dict(preset="infimed-1.7b", bf16=True, seq_length=8192,
                                                   tensor_model_parallel_size=2, context_parallel_size=4)
    te, local = config_with(**base, transformer_impl="te"), config_with(**base, transformer_impl="local")
    a, b = (stage_activation_bytes(c, model, Layout.of(c), 0) for c in (te, local))
    lang = model.language
    kv = lang.num_query_groups * lang.kv_channels
    # The other three ranks' 8192 × 3/4 tokens of K and V, bf16, split by TP, in every layer.
    assert b["language"] - a["language"] == lang.num_layers * 8192 * 3 / 4 * 4 * kv / 2
    assert b["vision"] == a["vision"]


def test_a_cp_rank_plans_its_share_of_the_images_rounded_up():
    model = get_preset("infimed-1.7b")
    one = config_with(preset="infimed-1.7b", bf16=True, seq_length=8190)
    three = config_with(preset="infimed-1.7b", bf16=True, seq_length=8190, context_parallel_size=3)
    images = images_per_micro_batch(one, model)
    assert images % 3  # a share that is not whole
    a, b = (stage_activation_bytes(c, model, Layout.of(c), 0) for c in (one, three))
    assert b["vision"] == pytest.approx(a["vision"] / images * -(-images // 3))


def test_the_distributed_optimizer_divides_optimizer_state_by_the_data_parallel_size():
    plain = plan_memory(config_with(preset="infimed-4b", bf16=True, tensor_model_parallel_size=2),
                        get_preset("infimed-4b"), world_size=16)
    sharded = plan_memory(config_with(preset="infimed-4b", bf16=True, tensor_model_parallel_size=2,
                                      use_distributed_optimizer=True), get_preset("infimed-4b"), world_size=16)
    assert sharded["layout"]["dp"] == 8
    assert sharded["bytes"]["optimizer"] == -(-plain["bytes"]["optimizer"] // 12 // 8) * 12
    assert sharded["bytes"]["weights"] == plain["bytes"]["weights"]


def test_the_worst_stage_decides_and_fits_compares_with_the_gpu():
    config = config_with(preset="infimed-1.7b", bf16=True, seq_length=8192, pipeline_model_parallel_size=2,
                         global_batch_size=16)
    plan = plan_memory(config, get_preset("infimed-1.7b"), world_size=2, gpu_memory_gb=80)
    assert plan["stage"] == 0 and plan["total_gb"] == max(plan["stage_totals_gb"])
    assert plan["in_flight_micro_batches"] == 2
    assert plan["fits"] == (plan["bytes"]["total"] <= 80 * GB)
    assert not plan_memory(config, get_preset("infimed-1.7b"), world_size=2, gpu_memory_gb=1)["fits"]


def test_dry_run_prints_the_memory_plan_for_the_given_world_size(capsys, mcore_world):
    assert main(["--dry-run", "--preset", "tiny", "--tensor-model-parallel-size", "2", "--world-size", "8",
                 "--gpu-memory-gb", "40"]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert memory["layout"]["dp"] == 4 and memory["gpu_memory_gb"] == 40 and memory["fits"]
    assert memory["total_gb"] == pytest.approx(memory["weights_gb"] + memory["grads_gb"] + memory["optimizer_gb"]
                                               + memory["activations_gb"], abs=0.004)


@pytest.mark.parametrize("flags, multiple", [([], 1), (["--sequence-parallel"], 2),
                                            (["--context-parallel-size", "3"], 6)])
def test_dry_run_reports_the_config_sequence_parallelism_and_its_pack_alignment(capsys, mcore_world, flags, multiple):
    assert main(["--dry-run", "--preset", "tiny", "--tensor-model-parallel-size", "2", "--seq-length", "510",
                 *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["effective"]["pad_multiple"] == multiple  # tp under SP, 2·cp under CP: what the loader pads to
    assert report["memory"]["layout"]["sequence_parallel"] is ("--sequence-parallel" in flags)


def test_a_world_size_that_tp_pp_cp_do_not_divide_is_refused_by_name(capsys):
    assert main(["--dry-run", "--tensor-model-parallel-size", "4", "--world-size", "6"]) == 2
    assert "--world-size 6 is not a multiple of TP×PP×CP = 4×1×1 = 4" in capsys.readouterr().err


def test_memory_flags_apply_only_to_a_dry_run(capsys):
    assert main(["--mock-data", "--world-size", "8"]) == 2
    assert "--world-size only applies to --dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--world-size", "0"], "--world-size is 0; it must be at least 1"),
    (["--gpu-memory-gb", "-1"], "--gpu-memory-gb is -1.0; it must be a positive"),
])
def test_a_world_size_or_gpu_memory_that_is_not_positive_is_refused(capsys, argv, message):
    assert main(["--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


# docs/launch.md's stage2 table: each row is the stage2 config with this layout, plain and distributed optimizer.
DOC_LAYOUTS = {
    "TP1": ["--tensor-model-parallel-size", "1", "--no-sequence-parallel"],
    "TP2": ["--tensor-model-parallel-size", "2", "--no-sequence-parallel"],
    "TP2 + SP": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "PP2": ["--tensor-model-parallel-size", "1", "--no-sequence-parallel", "--pipeline-model-parallel-size", "2"],
}
DOC_PRESETS = ("infimed-1.7b", "infimed-4b")


def doc_table_rows() -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in (REPO / "docs" / "launch.md").read_text().splitlines()
            if re.match(r"\| infimed-[\w.]+ \| (TP|PP)", line)]
    assert sorted((r[0], r[1]) for r in rows) == sorted((p, layout) for p in DOC_PRESETS for layout in DOC_LAYOUTS)
    return rows


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]


@pytest.mark.parametrize("row", doc_table_rows(), ids=lambda row: f"{row[0]}-{row[1]}")
def test_the_docs_stage2_table_is_what_the_planner_says(row, monkeypatch):
    monkeypatch.delenv("CKPT_ROOT", raising=False)
    monkeypatch.delenv("DATA_ROOT", raising=False)
    preset, layout, *cells = row
    plans = []
    for optimizer_flag in ("--no-use-distributed-optimizer", "--use-distributed-optimizer"):
        config, _ = load_config(["--config", str(REPO / "examples" / preset / "stage2.yaml"), *DOC_LAYOUTS[layout],
                                 optimizer_flag])
        plans.append(plan_memory(config, model_config_for(config), world_size=8))
    plain, sharded = plans
    parts = plain["activations_by_part_gb"]
    expected = [[plain["layout"]["dp"]], [plain["weights_gb"]], [plain["grads_gb"]],
                [plain["optimizer_gb"], sharded["optimizer_gb"]],
                [parts["language"], parts["vision"], parts["logits"], plain["activations_gb"]],
                [plain["total_gb"]], [sharded["total_gb"]]]
    assert [numbers(cell) for cell in cells] == [[round(x, 1) for x in values] for values in expected]
    verdicts = [cell.endswith("does not fit") for cell in cells[-2:]]
    assert verdicts == [not plain["fits"], not sharded["fits"]]


def test_the_distributed_optimizer_shards_over_data_and_context_parallel_ranks_as_megatron_does():
    # megatron-core gives the DistributedOptimizer its intra_dp_cp group: CP ranks hold shards too.
    plain = plan_memory(config_with(preset="infimed-4b", bf16=True, tensor_model_parallel_size=2,
                                    context_parallel_size=2), get_preset("infimed-4b"), world_size=16)
    sharded = plan_memory(config_with(preset="infimed-4b", bf16=True, tensor_model_parallel_size=2,
                                      context_parallel_size=2, use_distributed_optimizer=True),
                          get_preset("infimed-4b"), world_size=16)
    assert (sharded["layout"]["dp"], sharded["layout"]["cp"]) == (4, 2)
    assert sharded["bytes"]["optimizer"] == -(-plain["bytes"]["optimizer"] // 12 // 8) * 12
