"""Several training layouts in one torchrun launch: ``python -m torch.distributed.run
--nproc-per-node N layouts_worker.py ROOT NAME=FLAGS ...``. Parallel state is process-global, so
the layouts run one after another in the same processes: the process group stays up and only
megatron's model-parallel groups are rebuilt for each (``distributed.shutdown`` is replaced by
their teardown). Each layout trains through ``training.loop.train``, as infimed-train does, and
writes its metrics under ROOT/NAME, and ROOT/NAME/decoder-rows-rankR.json: the sequence length
each decoder block of rank R received, so a test can see the sequence really split."""

import json
import shlex
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_infimed.config.flags import load_config
from megatron_infimed.runtime import distributed
from megatron_infimed.training import loop


def _recording_build_run(build_run, rows: list[int]):
    def record(block, args, kwargs):
        # A later pipeline stage's block reads the activations its stage received instead.
        hidden = kwargs["hidden_states"] if kwargs["hidden_states"] is not None else block.input_tensor
        rows.append(hidden.shape[0])

    def build_and_record(config, resume):
        run = build_run(config, resume)
        for chunk in run.chunks:
            chunk.language_model.decoder.register_forward_pre_hook(record, with_kwargs=True)
        return run

    return build_and_record


def main(root: str, layouts: list[str]) -> None:
    loop.distributed.shutdown = parallel_state.destroy_model_parallel
    build_run = loop.build_run
    for layout in layouts:
        name, flags = layout.split("=", 1)
        config, _ = load_config([*shlex.split(flags), "--run-dir", f"{root}/{name}"])
        rows: list[int] = []
        loop.build_run = _recording_build_run(build_run, rows)
        loop.train(config)
        rank = torch.distributed.get_rank()
        (Path(root) / name / f"decoder-rows-rank{rank}.json").write_text(json.dumps(sorted(set(rows))))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
