"""torchrun worker for test_parallel.py (4 processes), two imports in one launch to save start-up time:

1. TP=2 (PP=1, DP=2): import, reload the checkpoint, write the gathered text logits and vision
   features (rank 0) to OUT.safetensors, for the test to compare with transformers;
2. TP=2, PP=2: import again, to CKPT_TP2PP2, whose export the test compares with TP=1's.

    torchrun --nproc-per-node 4 tp_worker.py QWEN3_DIR SIGLIP_DIR CKPT_TP2 CKPT_TP2PP2 OUT.safetensors
"""

import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_infimed.checkpoint.dist import load_weights
    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.convert.import_hf import import_hf, plan_import
    from megatron_infimed.model.infimed import InfiMedModel, packed_seq_params
    from megatron_infimed.runtime import distributed

    language, vision, checkpoint_tp2, checkpoint_tp2pp2, out = sys.argv[1:6]
    plan = plan_import(language, vision, preset="tiny")

    distributed.initialize(ParallelConfig(tensor_model_parallel_size=2), seed=1234)
    import_hf(plan, checkpoint_tp2)
    model = InfiMedModel(plan.config, parallel=ParallelConfig(tensor_model_parallel_size=2)).eval()
    load_weights(checkpoint_tp2, [model])
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 2048, (1, 23), generator=generator)
    pixels = torch.randn(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        logits = model(tokens, torch.arange(23).unsqueeze(0),
                       packed_seq_params=packed_seq_params(torch.tensor([0, 23]), 23))
        logits = gather_from_tensor_model_parallel_region(logits)
        features = model.vision_model(pixels)
    if torch.distributed.get_rank() == 0:
        save_file({"tokens": tokens, "pixels": pixels, "logits": logits.contiguous(),
                   "vision": features.contiguous()}, out)

    parallel_state.destroy_model_parallel()
    distributed.initialize(ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2),
                           seed=1234)
    import_hf(plan, checkpoint_tp2pp2)
    distributed.shutdown()


if __name__ == "__main__":
    main()
