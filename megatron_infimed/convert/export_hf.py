"""megatron-core distributed checkpoint (any TP/PP layout) → Hugging Face folder, shard by shard.

| mode              | weights                                   | loads with                                  |
|-------------------|-------------------------------------------|---------------------------------------------|
| full (default)    | model.{vision_tower,multi_modal_projector,| AutoModelForImageTextToText / ...CausalLM,  |
|                   | language_model}.*, lm_head (untied only)  | trust_remote_code=True (files in hf_files/) |
| ``language_only`` | model.*, lm_head: a plain Qwen3ForCausalLM| Qwen3ForCausalLM, no remote code            |

Streaming: output shards are planned from the checkpoint's metadata first (names, shapes and sizes
are known without reading a weight), so each shard's header is written before its data; then the
tensors are read from the torch_dist files one global tensor (or one layer of a stacked tensor) at
a time, converted, written and dropped, so peak memory is one megatron tensor and its split.
Everything goes to a hidden ``.NAME.partial`` folder renamed to ``NAME`` at the end; any failure
removes it, and every shape check runs before the folder is created.

Refused (ValueError, nothing left behind): checkpoint files whose SHA-256 differs from its
``checksums.sha256`` (``integrity.verify``, unless ``verify_checkpoint=False``), and NaN/inf in any
written tensor (``finite.check_finite`` on each shard, unless ``allow_non_finite``). Only the
allowlisted tokenizer files are copied, and never over a file the export wrote.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_infimed.checkpoint import integrity
from megatron_infimed.checkpoint.layout import atomic_folder, iteration_folder
from megatron_infimed.checkpoint.tokenizer_files import copy_tokenizer
from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.convert import mapping
from megatron_infimed.convert.dist_reader import DistCheckpointReader
from megatron_infimed.convert.finite import check_finite
from megatron_infimed.convert.hf_config import infimed_config, qwen3_config
from megatron_infimed.convert.safetensors_writer import SafetensorsWriter
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.data.images import RESIZE_MODES
from megatron_infimed.data.tokenizer import IMAGE_PAD
from megatron_infimed.model.token_reduction import tokens_per_image

HF_FILES = Path(__file__).parent / "hf_files"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_size(size: str | int) -> int:
    """``"5GB"`` → 5·10⁹ bytes (decimal units, as transformers uses); an int is bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", size.upper())
    if not match:
        raise ValueError(f"cannot read shard size {size!r}; expected e.g. '5GB', '500MB' or a number of bytes")
    return int(float(match.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2) or "B"])


def plan_shards(entries: list[mapping.Entry], bytes_per_element: int, max_bytes: int) -> list[list[mapping.Entry]]:
    """Greedy, in table order; the tensors split from one megatron tensor stay in one shard."""
    shards: list[list[mapping.Entry]] = [[]]
    used = 0
    for entry in entries:
        size = sum(torch.Size(s).numel() for s in entry.hf_shapes) * bytes_per_element
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += size
    return shards


def _byte_runs(rows: list[tuple[int, int]], sources: list[tuple[int, int, int, int]],
               row_bytes: int) -> list[tuple[int, int, int]]:
    """(fd, offset, bytes) runs of the checkpoint files holding ``rows`` ((first row, count) runs
    of the megatron tensor) given where its rows are stored (``DistCheckpointReader.row_sources``)."""
    runs = []
    for first, count in rows:
        for start, stored, fd, offset in sources:
            lo, hi = max(first, start), min(first + count, start + stored)
            if lo < hi:
                runs.append((fd, offset + (lo - start) * row_bytes, (hi - lo) * row_bytes))
    return runs


def _check_shapes(reader: DistCheckpointReader, entries: list[mapping.Entry]) -> None:
    problems = []
    for entry in entries:
        try:
            found = reader.shape(entry.megatron, entry.layer)
        except KeyError as error:
            problems.append(str(error.args[0]))
            continue
        if found != mapping.megatron_shape(entry):
            problems.append(f"'{entry.megatron}' has shape {found}, expected {mapping.megatron_shape(entry)}")
    if problems:
        raise ValueError(f"checkpoint {reader.directory} does not match its model_config.json: "
                         + "; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))


def _token_ids(tokenizer_dir: Path | None) -> dict[str, int | None]:
    from megatron_infimed.data.tokenizer import load_tokenizer, tokenizer_file

    try:
        tokenizer = load_tokenizer(tokenizer_file(tokenizer_dir)) if tokenizer_dir is not None else None
    except FileNotFoundError:  # files we do not read (e.g. vocab.json + merges.txt) are copied as they are
        tokenizer = None
    if tokenizer is None:
        return {}
    return {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id, "end_of_text_id": tokenizer.pad_id}


def _converted_tokenizer(tokenizer_dir: Path | None):
    """A SentencePiece tokenizer as a ``tokenizers.Tokenizer`` (``hf_tokenizer.convert``), when it
    encodes every probe exactly as SentencePiece does; else None, with a warning saying why."""
    from megatron_infimed.data.tokenizer import tokenizer_file

    try:
        source = tokenizer_file(tokenizer_dir) if tokenizer_dir is not None else None
    except FileNotFoundError:
        return None
    if source is None or source.suffix != ".model":
        return None
    from megatron_infimed.convert.hf_tokenizer import convert

    converted, different = convert(source)
    if different:
        warnings.warn(f"{source}: its tokenizers equivalent encodes {len(different)} probe string(s) "
                      f"differently (e.g. {different[0]!r}); the export keeps the SentencePiece model only, "
                      f"which AutoTokenizer cannot load", stacklevel=3)  # export_hf's caller
        return None
    return converted


def _write_tokenizer(tokenizer_dir: Path | None, target: Path, converted=None) -> None:
    """Copy the allowlisted tokenizer files (plus ``converted`` as ``tokenizer.json``, so
    ``AutoTokenizer`` and ``AutoProcessor`` load a SentencePiece run's tokenizer) and put our one
    chat template into tokenizer_config.json."""
    from megatron_infimed.data.chat_template import CHAT_TEMPLATE_JINJA
    from megatron_infimed.data.tokenizer import END_OF_TEXT, IM_END

    if tokenizer_dir is None:
        return
    # A source chat_template.jinja (e.g. Qwen3's) would take precedence over ours. A model folder
    # given as tokenizer also holds config.json and weight indexes: those must not reach the export.
    copy_tokenizer(tokenizer_dir, target, skip=("chat_template.jinja",), protect=True)
    if converted is not None:
        converted.save(str(target / "tokenizer.json"))
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config.update(chat_template=CHAT_TEMPLATE_JINJA, eos_token=IM_END, pad_token=END_OF_TEXT)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def _resize_mode(directory: Path) -> str:
    """The training run's image fit (``data.image_resize`` in run_config.json; the loader's default
    ``pad`` when the checkpoint has no run config, e.g. one made by import-hf)."""
    run_config = directory / "run_config.json"
    data = json.loads(run_config.read_text()).get("data", {}) if run_config.is_file() else {}
    mode = data.get("image_resize", "pad")
    if mode not in RESIZE_MODES:
        raise ValueError(f"{run_config} has data.image_resize {mode!r}; expected one of {RESIZE_MODES}")
    return mode


def _write_configs(config: ModelConfig, target: Path, language_only: bool, tokens: dict, dtype: str,
                   resize_mode: str = "pad") -> None:
    if language_only:
        hf = {**qwen3_config(config.language, tokens), "dtype": dtype}
    else:
        hf = infimed_config(config, tokens, tokens_per_image(config), dtype)
        for file in ("configuration_infimed.py", "modeling_infimed.py", "processing_infimed.py"):
            shutil.copy2(HF_FILES / file, target / file)
        vision = config.vision
        # The processor prepares prompts and images as training did (pad to square, <image> expanded).
        (target / "processor_config.json").write_text(json.dumps({
            "processor_class": "InfiMedProcessor",
            "auto_map": {"AutoProcessor": "processing_infimed.InfiMedProcessor"},
            "image_size": vision.image_size, "image_mean": list(vision.image_mean),
            "image_std": list(vision.image_std), "image_seq_length": tokens_per_image(config),
            "image_token": IMAGE_PAD, "placeholder": IMAGE_PLACEHOLDER, "resize_mode": resize_mode,
        }, indent=2))
        (target / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "SiglipImageProcessor", "do_resize": True, "do_rescale": True,
            "do_normalize": True, "image_mean": list(vision.image_mean), "image_std": list(vision.image_std),
            "size": {"height": vision.image_size, "width": vision.image_size}, "resample": 3,
            "rescale_factor": 1 / 255,
        }, indent=2))
    (target / "config.json").write_text(json.dumps(hf, indent=2))
    eos = [t for t in (tokens.get("eos_token_id"), tokens.get("end_of_text_id")) if t is not None]
    (target / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos or None, "pad_token_id": tokens.get("pad_token_id"), "do_sample": False}, indent=2))


def export_hf(checkpoint: str | Path, output: str | Path, *, dtype: str | None = None, language_only: bool = False,
              tokenizer: str | Path | None = None, max_shard_size: str | int = "5GB",
              progress: bool = True, verify_checkpoint: bool = True, allow_non_finite: bool = False) -> Path:
    """Write ``checkpoint`` as a Hugging Face folder at ``output``; returns ``output``."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"output {output} already exists; remove it or choose another folder")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    directory = iteration_folder(checkpoint)
    if verify_checkpoint:
        integrity.verify(directory)  # CheckpointCorrupted naming the file; a warning without a manifest
    config_file = directory / "model_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no model_config.json (written by infimed-train and import-hf)")
    config = ModelConfig.from_dict(json.loads(config_file.read_text()))
    reader = DistCheckpointReader(directory)
    parts = ("language", "lm_head") if language_only else mapping.PARTS
    entries = mapping.entries(config, parts)
    _check_shapes(reader, entries)
    tokenizer_dir = Path(tokenizer) if tokenizer else directory / "tokenizer"
    if tokenizer and not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} does not exist")
    tokenizer_dir = tokenizer_dir if tokenizer_dir.is_dir() else None
    tokens = _token_ids(tokenizer_dir)
    converted_tokenizer = _converted_tokenizer(tokenizer_dir)  # checked before any weight is written
    resize_mode = _resize_mode(directory)
    stored = reader.dtype(entries[0].megatron, entries[0].layer)
    out_dtype = DTYPES[dtype] if dtype else stored
    prefixes = mapping.HF_PREFIXES["qwen3" if language_only else "infimed"]
    shards = plan_shards(entries, out_dtype.itemsize, parse_size(max_shard_size))

    try:
        with atomic_folder(output) as partial:
            partial.mkdir(parents=True)
            weight_map, total = _write_shards(reader, shards, config, partial, prefixes, out_dtype,
                                              allow_non_finite, progress)
            (partial / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
            _write_configs(config, partial, language_only, tokens, str(out_dtype).removeprefix("torch."),
                           resize_mode)
            _write_tokenizer(tokenizer_dir, partial, converted_tokenizer)
    finally:
        reader.close()
    return output


def _write_shards(reader: DistCheckpointReader, shards, config: ModelConfig, folder: Path, prefixes: dict,
                  out_dtype: torch.dtype, allow_non_finite: bool, progress: bool) -> tuple[dict[str, str], int]:
    """Every shard of ``shards`` into ``folder``; returns (tensor name → shard file, total bytes)."""
    weight_map, total = {}, 0
    bar = tqdm(total=sum(len(shard) for shard in shards), desc=f"export {folder.name}", unit="tensor",
               disable=not progress)
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        specs = [(prefixes[entry.row.part] + hf, out_dtype, shape)
                 for entry in shard for hf, shape in zip(entry.hf, entry.hf_shapes)]
        with SafetensorsWriter(folder / name, specs, metadata={"format": "pt"}) as writer:
            for entry in shard:
                names = [prefixes[entry.row.part] + hf for hf in entry.hf]
                # Same dtype and rows stored as plain runs: file-to-file copies, nothing read.
                same_dtype = reader.dtype(entry.megatron, entry.layer) == out_dtype
                sources = reader.row_sources(entry.megatron, entry.layer) if same_dtype else None
                if sources is not None:
                    shape = mapping.megatron_shape(entry)
                    row_bytes = math.prod(shape[1:]) * out_dtype.itemsize
                    for tensor_name, rows in zip(names, mapping.split_rows(entry, config)):
                        writer.copy(tensor_name, _byte_runs(rows, sources, row_bytes))
                else:
                    fused = reader.read(entry.megatron, entry.layer)
                    for tensor_name, tensor in zip(names, mapping.split(entry, fused, config)):
                        writer.write(tensor_name, tensor.to(out_dtype))
                bar.update(1)
        if not allow_non_finite:
            check_finite(folder / name, {prefixes[e.row.part] + hf: f"from '{e.megatron}'"
                                         for e in shard for hf in e.hf})
        weight_map.update(dict.fromkeys((spec[0] for spec in specs), name))
        total += writer.data_bytes
    bar.close()
    return weight_map, total
