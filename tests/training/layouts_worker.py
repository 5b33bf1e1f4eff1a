"""Several training layouts in one torchrun launch: ``python -m torch.distributed.run
--nproc-per-node N layouts_worker.py ROOT NAME=FLAGS ...``. Parallel state is process-global, so
the layouts run one after another in the same processes: the process group stays up and only
megatron's model-parallel groups are rebuilt for each (``distributed.shutdown`` is replaced by
their teardown). Each layout trains through ``training.loop.train``, as infimed-train does, and
writes its metrics under ROOT/NAME."""

import shlex
import sys

from megatron.core import parallel_state

from megatron_infimed.config.flags import load_config
from megatron_infimed.runtime import distributed
from megatron_infimed.training import loop


def main(root: str, layouts: list[str]) -> None:
    loop.distributed.shutdown = parallel_state.destroy_model_parallel
    for layout in layouts:
        name, flags = layout.split("=", 1)
        config, _ = load_config([*shlex.split(flags), "--run-dir", f"{root}/{name}"])
        loop.train(config)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
