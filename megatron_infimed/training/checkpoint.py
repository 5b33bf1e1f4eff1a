"""Checkpoints on megatron-core ``dist_checkpointing`` (torch_dist), loadable under any TP/PP layout.

    SAVE/
      latest_checkpointed_iteration.txt   written atomically, after every rank has finished
      iter_0000020/
        (dist_checkpointing files)        model, optimizer, scheduler, iteration, consumed samples
        run_config.json  model_config.json
        loader/dp0.pt ...                 the data loader's state per data-parallel rank
        rng/rank0.pt ...                  RNG states per rank (restored when the layout is unchanged)
        tokenizer/                        a copy of the run's tokenizer files

A checkpoint counts only once the tracker names it, so a run killed half-way through a save
resumes from the previous one; older iterations beyond ``keep_last`` are removed after that.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from megatron.core import dist_checkpointing, parallel_state

from megatron_infimed.training.tracker import TRACKER, iteration_dir, latest_iteration, write_tracker


def _model_state(chunks) -> dict:
    # Sharded keys carry global layer numbers, so one flat prefix works for every layout.
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


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
    directory = iteration_dir(root, iteration)
    if torch.distributed.get_rank() == 0:
        if directory.exists():  # a save of this iteration that did not finish
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    torch.distributed.barrier()
    return directory


def _write_tracker(root: str, iteration: int, directory: Path, model_config, keep_last: int) -> None:
    """Rank 0, once every rank's files are complete: config files, then the tracker, atomically."""
    if torch.distributed.get_rank() != 0:
        return
    (directory / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=2))
    (directory / "layout.json").write_text(json.dumps(_layout()))
    write_tracker(root, iteration)
    _remove_old(root, iteration, keep_last)


def _commit(root: str, iteration: int, directory: Path, model_config, keep_last: int = 0) -> None:
    torch.distributed.barrier()
    _write_tracker(root, iteration, directory, model_config, keep_last)
    torch.distributed.barrier()


def save(root: str, iteration: int, consumed_samples: int, chunks, optimizer, scheduler, data_source,
         run_config, tokenizer_path: str | None = None, async_queue=None) -> Path:
    """Collective: every rank calls it. With ``async_queue`` (megatron-core's ``AsyncCallsQueue``)
    the tensors are written in the background and the tracker only once every rank is done."""
    directory = _prepare(root, iteration)
    rank = torch.distributed.get_rank()
    model_state = _model_state(chunks)
    state = {
        **model_state,
        "optimizer": optimizer.sharded_state_dict(model_state),
        "scheduler": scheduler.state_dict(),
        "iteration": iteration,
        "consumed_samples": consumed_samples,
    }
    request = dist_checkpointing.save(state, str(directory), async_sharded_save=async_queue is not None)
    (directory / "rng").mkdir(exist_ok=True)
    torch.save({"layout": _layout(), **_rng_state()}, directory / "rng" / f"rank{rank}.pt")
    if parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.is_pipeline_first_stage():
        (directory / "loader").mkdir(exist_ok=True)
        dp_rank = parallel_state.get_data_parallel_rank()
        torch.save(data_source.state_dict(), directory / "loader" / f"dp{dp_rank}.pt")
    if rank == 0:
        (directory / "run_config.json").write_text(json.dumps(run_config.to_dict(), indent=2, default=str))
        if tokenizer_path:
            _copy_tokenizer(tokenizer_path, directory / "tokenizer")
    if async_queue is None:
        _commit(root, iteration, directory, chunks[0].model_config, run_config.keep_last)
    else:
        request.add_finalize_fn(lambda: _write_tracker(root, iteration, directory, chunks[0].model_config,
                                                       run_config.keep_last))
        async_queue.schedule_async_request(request)
    return directory


def _copy_tokenizer(path: str, target: Path) -> None:
    source = Path(path)
    target.mkdir(exist_ok=True)
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    for file in files:
        shutil.copy2(file, target / file.name)


def _remove_old(root: str, current: int, keep_last: int) -> None:
    if keep_last <= 0:
        return
    finished = sorted(int(p.name[5:]) for p in Path(root).glob("iter_*") if p.name[5:].isdigit()
                      and int(p.name[5:]) <= current)
    for old in finished[:-keep_last]:
        shutil.rmtree(iteration_dir(root, old), ignore_errors=True)


def load(root: str, chunks, optimizer, scheduler, data_source, reset_data: bool = False) -> dict:
    """Resume everything from the latest complete checkpoint under ``root``."""
    iteration = latest_iteration(root)
    directory = iteration_dir(root, iteration)
    model_state = _model_state(chunks)
    state = {**model_state, "optimizer": optimizer.sharded_state_dict(model_state, is_loading=True)}
    loaded = dist_checkpointing.load(state, str(directory))
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[f"model{i}"], strict=True)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    saved_layout = json.loads((directory / "layout.json").read_text())
    _load_loader_state(directory, data_source, saved_layout, reset_data)
    _load_rng(directory, saved_layout)
    return {"iteration": int(loaded["iteration"]), "consumed_samples": int(loaded["consumed_samples"])}


def _load_loader_state(directory: Path, data_source, saved_layout: dict, reset: bool) -> None:
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    if saved_layout["dp"] != dp and not reset:
        raise ValueError(f"checkpoint {directory} was saved with data-parallel size {saved_layout['dp']} and "
                         f"this run has {dp}: the loader cannot resume on exactly the next sample. Keep the "
                         f"data-parallel size, or pass --reset-data-state to restart the data streams")
    # After a reset the source only reads where the saved streams had got to (their epoch).
    saved_rank = min(dp_rank, saved_layout["dp"] - 1)
    state = torch.load(directory / "loader" / f"dp{saved_rank}.pt", weights_only=True)
    data_source.load_state_dict(state)


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


def save_weights(root: str, chunks, iteration: int = 0) -> Path:
    """Model weights only, in the same layout (used by ``infimed-convert import-hf``). Collective."""
    directory = _prepare(root, iteration)
    dist_checkpointing.save(_model_state(chunks), str(directory))
    _commit(root, iteration, directory, chunks[0].model_config)
    return directory


def load_weights(root: str, chunks) -> int:
    """Model weights only (``--pretrained-checkpoint``): a new run with a fresh optimizer."""
    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"no checkpoint under {root} (missing {TRACKER})")
    loaded = dist_checkpointing.load(_model_state(chunks), str(iteration_dir(root, iteration)))
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[f"model{i}"], strict=True)
    return iteration


class SampleLedger:
    """``RUN_DIR/samples-dpR.jsonl``: which samples each data-parallel rank trained at each iteration."""

    def __init__(self, run_dir: str | None, enabled: bool):
        self.enabled = bool(run_dir) and enabled
        self.run_dir = Path(run_dir) if run_dir else None

    def write(self, iteration: int, dp_rank: int, packs) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / f"samples-dp{dp_rank}.jsonl").open("a") as f:
            f.write(json.dumps({"iteration": iteration, "sample_ids": [s for p in packs for s in p.sample_ids]})
                    + "\n")
