"""``infimed-convert``: Hugging Face ⇄ megatron-core checkpoints.

    infimed-convert import-hf --language QWEN3_DIR [--vision SIGLIP_DIR] --output CKPT [--preset tiny]
                              [--tensor-model-parallel-size 2] [--pipeline-model-parallel-size 2]
    infimed-convert export-hf --checkpoint CKPT --output HF_DIR [--language-only] [--dtype bfloat16]
                              [--no-verify-checkpoint] [--allow-non-finite]

import-hf with TP×PP > 1 checks its input in this process, then re-launches itself under
``torchrun --standalone --nproc-per-node TP×PP`` (each rank writes its own piece of the
checkpoint); started under torchrun or srun already, it uses that world as it is.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infimed-convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import-hf", help="Qwen3 (+ SigLIP) safetensors → megatron-core checkpoint")
    imp.add_argument("--language", required=True, help="Qwen3 checkpoint folder (config.json + safetensors)")
    imp.add_argument("--vision", help="SigLIP checkpoint folder; absent: the vision encoder starts from random init")
    imp.add_argument("--projector", help="safetensors file/folder holding the projector (e.g. an exported model); "
                                         "absent: the projector starts fresh")
    imp.add_argument("--output", required=True, help="checkpoint folder to create (must not exist)")
    group = imp.add_mutually_exclusive_group()
    group.add_argument("--preset", help="preset the checkpoints must match (also gives reduction and projector)")
    group.add_argument("--config", help="model_config.json the checkpoints must match")
    imp.add_argument("--tensor-model-parallel-size", type=int, default=1)
    imp.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    imp.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                     help="parameter dtype of the checkpoint (match the training run: bfloat16 for --bf16)")
    imp.add_argument("--seed", type=int, default=1234, help="seed of the fresh projector / vision init")
    exp = sub.add_parser("export-hf", help="megatron-core checkpoint (any TP/PP) → Hugging Face folder")
    exp.add_argument("--checkpoint", required=True, help="checkpoint root (with latest_checkpointed_iteration.txt) "
                                                         "or one iter_XXXXXXX folder")
    exp.add_argument("--output", required=True, help="folder to create (must not exist)")
    exp.add_argument("--dtype", choices=DTYPE_CHOICES, help="dtype of the exported weights (default: as stored)")
    exp.add_argument("--language-only", action="store_true", help="a plain Qwen3ForCausalLM folder")
    exp.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's tokenizer/)")
    exp.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB, 500MB")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    exp.add_argument("--no-verify-checkpoint", action="store_true",
                     help="skip the SHA-256 check of the checkpoint's files against its checksums.sha256")
    exp.add_argument("--allow-non-finite", action="store_true",
                     help="export NaN/inf weights instead of refusing them")
    return parser


def _import(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from megatron_infimed.checkpoint.layout import partial_folder
    from megatron_infimed.convert.import_hf import import_hf, plan_import

    plan = plan_import(args.language, args.vision, preset=args.preset, config_file=args.config,
                       projector=args.projector)
    output = Path(args.output)
    if output.exists():
        raise FileExistsError(f"output {output} already exists; remove it or choose another folder")
    world = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    launched = "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ
    if world > 1 and not launched:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                   "-m", "megatron_infimed.cli.convert", *argv]
        code = subprocess.call(command)
        if code:  # a rank killed by torchrun cannot clean up after itself
            shutil.rmtree(partial_folder(output), ignore_errors=True)
        return code

    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.runtime import distributed

    distributed.initialize(ParallelConfig(tensor_model_parallel_size=args.tensor_model_parallel_size,
                                                      pipeline_model_parallel_size=args.pipeline_model_parallel_size),
                           seed=args.seed)
    try:
        import_hf(plan, output, dtype=getattr(torch, args.dtype), seed=args.seed)
        if torch.distributed.get_rank() == 0:
            print(f"infimed-convert: wrote {output} (TP={args.tensor_model_parallel_size}, "
                  f"PP={args.pipeline_model_parallel_size}, {args.dtype}); {plan.summary()}")
    finally:
        distributed.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "import-hf":
            return _import(args, argv)
        from megatron_infimed.convert.export_hf import export_hf

        out = export_hf(args.checkpoint, args.output, dtype=args.dtype, language_only=args.language_only,
                        tokenizer=args.tokenizer, max_shard_size=args.max_shard_size, progress=not args.no_progress,
                        verify_checkpoint=not args.no_verify_checkpoint, allow_non_finite=args.allow_non_finite)
        print(f"infimed-convert: wrote {out}")
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, pickle.UnpicklingError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"infimed-convert: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
