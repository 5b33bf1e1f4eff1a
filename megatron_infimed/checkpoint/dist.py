"""Checkpoints on megatron-core ``dist_checkpointing`` (torch_dist), loadable under any TP/PP layout.

    SAVE/
      latest_checkpointed_iteration.txt   written atomically, after every rank has finished
      iter_0000020/
        (dist_checkpointing files)        model, optimizer, scheduler, iteration, consumed samples
        run_config.json  model_config.json
        loader/dp0.pt ...                 the data loader's stream state per data-parallel rank (small)
        loader/dp0-held.pt ...            the samples its packer held (raw shard bytes: large)
        rng/rank0.pt ...                  RNG states per rank (restored when the layout is unchanged)
        tokenizer/                        the run's tokenizer files (an allowlist, never a whole folder)
        checksums.sha256                  SHA-256 of every file above, written last

A checkpoint counts only once the tracker names it, so a run killed half-way through a save
resumes from the previous one; older iterations beyond ``keep_last`` are removed after that, by
rank 0 in a background thread while training goes on.
A model with a NaN/inf parameter is never saved, so rotation never removes the last finite one.
Loading checks the files against ``checksums.sha256`` (split across ranks) and reads DCP's
pickled ``.metadata`` with an allowlist before megatron-core does.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import warnings
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state

from megatron_infimed.checkpoint import integrity
from megatron_infimed.checkpoint.async_save import tie_writer_to_this_process
from megatron_infimed.checkpoint.layout import (
    MODEL_CONFIG,
    RUN_CONFIG,
    TOKENIZER_DIR,
    TRACKER,
    iteration_dir,
    latest_iteration,
    write_tracker,
)
from megatron_infimed.checkpoint.metadata import read_metadata
from megatron_infimed.checkpoint.tokenizer_files import copy_tokenizer
from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.data.reshard import join_held, reshard_loader_states, split_held
from megatron_infimed.model.token_reduction import tokens_per_image
from megatron_infimed.runtime import distributed

log = logging.getLogger(__name__)


class NonFiniteModel(ValueError):
    """A parameter holds NaN or inf: the model is not saved (it would replace a good checkpoint)."""


def model_state(chunks) -> dict:
    """The chunks' sharded state under one flat prefix: sharded keys carry global layer numbers,
    so it works for every layout."""
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


# How megatron-core's DistributedOptimizer lays out its state: "fully_reshardable" stores, per
# parameter, tensors of the parameter's shape under its sharded key, so a checkpoint loads under any
# TP/PP/DP layout. Its cost: at save and at load every rank holds the fp32 state (weights and two
# moments) of its whole TP x PP slice in host memory, not only its DP shard. The alternatives in
# 0.16.1: "dp_reshardable" stores the flat buffers (no gather, but reloads only at the same TP x PP),
# and the default "fully_sharded_model_space" cannot be saved at all. Other optimizers ignore this.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def optimizer_state(optimizer, model: dict, is_loading: bool = False) -> dict:
    """The optimizer's sharded state against the model's (``model_state``), for saving or loading."""
    return optimizer.sharded_state_dict(model, is_loading=is_loading, metadata=dict(OPTIMIZER_METADATA))


def _layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "world": torch.distributed.get_world_size(),
    }


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "tracker": {k: v for k, v in get_cuda_rng_tracker().get_states().items()
                         if isinstance(v, torch.Tensor)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _prepare(root: str, iteration: int) -> Path:
    tie_writer_to_this_process()  # megatron's writer helpers must not outlive a killed trainer
    directory = iteration_dir(root, iteration)
    if torch.distributed.get_rank() == 0:
        if directory.exists():  # a save of this iteration that did not finish
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    torch.distributed.barrier()
    return directory


def _write_tracker(root: str, iteration: int, directory: Path, model_config, keep_last: int) -> None:
    """Rank 0, once every rank's files are complete: config files, the checksum manifest, then the
    tracker, atomically; then it starts removing the checkpoints beyond ``keep_last``."""
    if torch.distributed.get_rank() != 0:
        return
    (directory / MODEL_CONFIG).write_text(json.dumps(model_config.to_dict(), indent=2))
    (directory / "layout.json").write_text(json.dumps(_layout()))
    integrity.write_manifest(directory)
    write_tracker(root, iteration)
    _start_removal(root, iteration, keep_last)


def _commit(root: str, iteration: int, directory: Path, model_config, keep_last: int = 0) -> None:
    torch.distributed.barrier()
    _write_tracker(root, iteration, directory, model_config, keep_last)
    torch.distributed.barrier()


def save(root: str, run, async_queue=None) -> Path:
    """Save ``run`` (a ``training.run.Run``: everything its ``sharded_state_dict`` lists, the
    loader's state, RNG states, the run's configuration and tokenizer files). Collective: every rank
    calls it. With ``async_queue`` (megatron-core's ``AsyncCallsQueue``) the tensors are written in
    the background and the tracker only once every rank is done."""
    iteration, config = run.iteration, run.config
    check_finite(run.chunks, iteration)
    directory = _prepare(root, iteration)
    rank = torch.distributed.get_rank()
    request = dist_checkpointing.save(run.sharded_state_dict(), str(directory),
                                      async_sharded_save=async_queue is not None)
    (directory / "rng").mkdir(exist_ok=True)
    torch.save({"layout": _layout(), **_rng_state()}, directory / "rng" / f"rank{rank}.pt")
    if (parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_context_parallel_rank() == 0
            and parallel_state.is_pipeline_first_stage()):  # the reader of each data-parallel rank
        (directory / "loader").mkdir(exist_ok=True)
        save_loader_state(directory / "loader", parallel_state.get_data_parallel_rank(), run.feed.state_dict())
    if rank == 0:
        (directory / RUN_CONFIG).write_text(json.dumps(config.to_dict(), indent=2, default=str))
        if config.data.tokenizer and not config.data.mock_data:
            copy_tokenizer(config.data.tokenizer, directory / TOKENIZER_DIR)
    keep_last = config.checkpoint.keep_last
    if async_queue is None:
        _commit(root, iteration, directory, run.model_config, keep_last)
    else:
        request.add_finalize_fn(lambda: _write_tracker(root, iteration, directory, run.model_config, keep_last))
        async_queue.schedule_async_request(request)
    return directory


def check_finite(chunks, iteration: int) -> None:
    """Collective: raise ``NonFiniteModel`` on every rank if any rank holds a NaN/inf parameter."""
    bad = next((name for i, chunk in enumerate(chunks) for name, p in chunk.named_parameters()
                if not torch.isfinite(p).all()), None)
    flag = torch.tensor([int(bad is not None)], device=distributed.device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        where = f"parameter {bad} on rank {torch.distributed.get_rank()}" if bad else "a parameter on another rank"
        raise NonFiniteModel(f"iteration {iteration}: {where} is NaN or inf; refusing to save a non-finite model "
                             f"(the last checkpoint is kept)")


def verify(directory: Path) -> None:
    """Collective: every rank checksums its share of the files; any mismatch fails every rank."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    error = ""
    try:
        with warnings.catch_warnings():
            if rank:  # one warning for a checkpoint without a manifest, not one per rank
                warnings.simplefilter("ignore")
            integrity.verify(directory, part=(rank, world))
    except integrity.CheckpointCorrupted as exc:
        error = str(exc)
    flag = torch.tensor([int(bool(error))], device=distributed.device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        raise integrity.CheckpointCorrupted(error or f"checkpoint {directory} failed verification on another "
                                                     f"rank (its error names the file)")


def _readable(directory: Path, verify_files: bool) -> set[str]:
    """Before megatron-core reads ``directory``: its files are those written, and the pickled
    ``.metadata`` names only DCP classes. Returns the keys the checkpoint stores."""
    if verify_files:
        verify(directory)
    for name in ("common.pt", "metadata.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} lacks {name}, which megatron-core writes with "
                                    f"every torch_dist checkpoint; the folder is incomplete")
    return set(read_metadata(directory).state_dict_metadata)


def without_missing_extra_state(request: dict, stored: set[str]) -> dict:
    """``request`` less the Transformer Engine ``_extra_state`` objects the checkpoint does not hold
    (it was saved by local layers, which have none): TE recreates that FP8 bookkeeping on its own.
    Stored ``_extra_state`` a local model does not ask for is simply not read."""
    def keep(value) -> bool:
        key = getattr(value, "key", None)
        return not (isinstance(key, str) and key.endswith("_extra_state")
                    and not any(name == key or name.startswith(key + "/") for name in stored))

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if keep(v)}
        return node

    return walk(request)


def load_module_state(module: torch.nn.Module, state: dict) -> None:
    """``load_state_dict`` that tolerates only missing TE ``_extra_state``; anything else missing or
    unexpected is an error, as with ``strict=True``."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint and model disagree: missing {missing[:5]}, unexpected {unexpected[:5]}")


# Rank 0's deletion of the checkpoints beyond keep_last, if one is running. Deleting a large
# checkpoint can take minutes; inline it would hold the other ranks in the commit's barrier (or the
# next step's first collective) until their process-group timeout fails the run.
_removal: threading.Thread | None = None


def _start_removal(root: str, current: int, keep_last: int) -> None:
    """Delete, in the background, the iterations up to ``current`` older than the newest
    ``keep_last``. The previous deletion is finished first, so two never list and delete the same
    folders; the thread is no daemon, so the process finishes it before exiting."""
    global _removal
    if keep_last <= 0:
        return
    wait_for_removal()
    _removal = threading.Thread(target=_remove_old, args=(root, current, keep_last), name="checkpoint-removal")
    _removal.start()


def wait_for_removal() -> None:
    """Block until rank 0's background deletion of old checkpoints, if any, is done."""
    global _removal
    if _removal is not None:
        _removal.join()
        _removal = None


def _remove_old(root: str, current: int, keep_last: int) -> None:
    # Only iterations up to ``current``: a later folder is a save in progress, never ours to delete;
    # ``current`` itself, the tracker's checkpoint, is always among the newest kept.
    finished = sorted(int(p.name[5:]) for p in Path(root).glob("iter_*") if p.name[5:].isdigit()
                      and int(p.name[5:]) <= current)
    for old in finished[:-keep_last]:
        shutil.rmtree(iteration_dir(root, old), ignore_errors=True)


def load(root: str, run) -> int:
    """Resume ``run`` from the latest complete checkpoint under ``root``; returns its iteration."""
    reset_data = run.config.data.reset_data_state
    directory = iteration_dir(root, latest_iteration(root))
    stored = _readable(directory, run.config.checkpoint.verify_checkpoint)
    if not reset_data:
        _check_image_tokens(directory, run.model_config)
    model = model_state(run.chunks)
    # Only the sharded parts are requested; the scheduler and the counters come back from common.pt.
    request = {**model, "optimizer": optimizer_state(run.optimizer, model, is_loading=True)}
    run.load_sharded_state_dict(dist_checkpointing.load(without_missing_extra_state(request, stored),
                                                        str(directory)))
    saved_layout = json.loads((directory / "layout.json").read_text())
    _load_loader_state(directory, run.feed, saved_layout, run.config.data)
    _load_rng(directory, saved_layout)
    return run.iteration


def _check_image_tokens(directory: Path, model_config) -> None:
    """The loader's buffered samples were tokenised with the saved run's image-token count."""
    saved = ModelConfig.from_dict(json.loads((directory / MODEL_CONFIG).read_text()))
    before, now = tokens_per_image(saved), tokens_per_image(model_config)
    if before != now:
        raise ValueError(f"checkpoint {directory} was trained with {before} tokens per image (reduction "
                         f"{saved.reduction.kind}) and this run has {now} (reduction {model_config.reduction.kind}): "
                         f"the loader's buffered samples hold the old count. Keep the reduction to resume, or pass "
                         f"--reset-data-state to restart the data streams with the new one")


def save_loader_state(folder: Path, dp_rank: int, state: dict) -> None:
    """Data-parallel rank ``dp_rank``'s loader ``state`` in ``folder``: ``dp{R}.pt``, its stream state,
    and ``dp{R}-held.pt``, the samples it holds (``split_held``; mock data has none, so no such file),
    so that a reshard reads only the held samples it deals."""
    small, held = split_held(state)
    if held is not None:
        torch.save(held, folder / f"dp{dp_rank}-held.pt")
    torch.save(small, folder / f"dp{dp_rank}.pt")


def read_loader_state(folder: Path, saved_dp: int, dp_rank: int, dp: int, num_workers: int, reset: bool) -> dict:
    """The loader state of data-parallel rank ``dp_rank`` of ``dp`` (``num_workers`` each) from the
    files of a run saved at data-parallel size ``saved_dp``. At the saved size and worker count, or for
    mock data, it reads its own files only; otherwise every saved rank's stream state and the held
    samples that ``reshard_loader_states`` deals it (``dp{R}-held.pt`` of those saved ranks only).
    Checkpoints saved before the split (one ``dp{R}.pt`` holding everything) load the same way, reading
    every saved rank's whole file when resharded. ``reset``: only the saved epoch is used."""
    def saved(rank: int) -> dict:
        return torch.load(folder / f"dp{rank}.pt", weights_only=True)

    def held(rank: int) -> dict:
        return torch.load(folder / f"dp{rank}-held.pt", weights_only=True)

    first = min(dp_rank, saved_dp - 1)
    state = saved(first)
    same_split = saved_dp == dp and state.get("num_workers", num_workers) == num_workers
    if state.get("kind") == "mock":
        return state
    if same_split:
        return join_held(state, held(dp_rank)) if "held_samples" in state else state
    if reset:  # the source only reads where the saved streams had got to (their epoch)
        return state
    states = (state if rank == first else saved(rank) for rank in range(saved_dp))
    state = reshard_loader_states(states, dp_rank, dp, num_workers, held=held)
    if dp_rank == 0:
        log.info("loader state resharded from data-parallel size %d to %d (%d workers per rank)", saved_dp, dp,
                 num_workers)
    return state


def _load_loader_state(directory: Path, feed, saved_layout: dict, data) -> None:
    """Restore the reading ranks' data source (``data``: the run's ``DataConfig``). At the saved
    data-parallel size and worker count each rank loads its own state; otherwise every new rank
    reshards all saved ranks' states (``data/reshard.py``, ``read_loader_state``), and mock data
    converts its count."""
    if feed.source is None:
        return  # not its replica's reader: no source to restore
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    saved_dp = saved_layout["dp"]
    state = read_loader_state(directory / "loader", saved_dp, dp_rank, dp, data.num_workers, data.reset_data_state)
    feed.load_state_dict(state)


def _load_rng(directory: Path, saved_layout: dict) -> None:
    if saved_layout != _layout():
        return  # another layout: per-rank RNG streams do not map onto the new ranks
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = torch.load(directory / "rng" / f"rank{torch.distributed.get_rank()}.pt", weights_only=True)
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    if state["tracker"]:
        get_cuda_rng_tracker().set_states(state["tracker"])


def save_weights(root: str, chunks, iteration: int = 0, tokenizer_path: str | Path | None = None) -> Path:
    """Model weights only, in the same layout (used by ``infimed-convert import-hf``). Collective."""
    directory = _prepare(root, iteration)
    dist_checkpointing.save(model_state(chunks), str(directory))
    if tokenizer_path is not None and torch.distributed.get_rank() == 0:
        copy_tokenizer(tokenizer_path, directory / TOKENIZER_DIR)
    _commit(root, iteration, directory, chunks[0].model_config)
    return directory


def load_weights(root: str, chunks, verify_files: bool = True) -> int:
    """Model weights only (``--pretrained-checkpoint``): a new run with a fresh optimizer."""
    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"no checkpoint under {root} (missing {TRACKER})")
    stored = _readable(iteration_dir(root, iteration), verify_files)
    request = without_missing_extra_state(model_state(chunks), stored)
    loaded = dist_checkpointing.load(request, str(iteration_dir(root, iteration)))
    for i, chunk in enumerate(chunks):
        load_module_state(chunk, loaded[f"model{i}"])
    return iteration
