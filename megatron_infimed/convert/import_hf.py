"""Hugging Face Qwen3 (+ SigLIP) safetensors → megatron-core distributed checkpoint.

Two steps, so that bad input fails before anything is written:

1. ``plan_import`` (any process, no torch.distributed): reads the configs, builds the
   ``ModelConfig`` from them, checks it against a preset or config file, and checks every
   tensor's name and shape from the safetensors headers (no weights loaded).
2. ``import_hf`` (collective, every rank of an initialised world): each rank builds its own
   TP/PP piece of ``InfiMedModel``, fills it tensor by tensor from the mapping table and saves
   with ``training.checkpoint.save_weights``, into a hidden ``.NAME.partial`` folder that rank 0
   renames to ``NAME`` at the end (a failure removes it).

Parts without a source start from ``model.init``'s deterministic initialisation: always the
projector unless ``projector`` is given, and the vision encoder when no SigLIP folder is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from megatron_infimed.config.presets import PRESETS, ModelConfig, get_preset
from megatron_infimed.convert import mapping
from megatron_infimed.convert.hf_config import language_from_qwen3, mismatches, read_config, vision_from_siglip
from megatron_infimed.convert.safetensors_folder import SafetensorsFolder
from megatron_infimed.model.token_reduction import tokens_per_image

# Tensors a source may hold that this model does not use, by design (counted and reported).
_NOT_USED = {
    "vision": ("text_model.", "logit_scale", "logit_bias", "head.", "vision_model.head."),
    "projector": ("",),  # a full exported folder: everything but the projector is not ours to read here
}


@dataclass
class Source:
    """One checked safetensors folder and the prefix its part's names sit under."""

    folder: SafetensorsFolder
    prefix: str

    def get(self, relative: str) -> torch.Tensor:
        return self.folder.get(self.prefix + relative)


@dataclass
class ImportPlan:
    config: ModelConfig
    sources: dict[str, Source]  # part → source; a part without one is initialised fresh
    tokenizer_dir: Path | None
    not_used: dict[str, int] = field(default_factory=dict)  # "vision: text_model." → count

    def summary(self) -> str:
        fresh = [p for p in ("vision", "projector") if p not in self.sources]
        skipped = ", ".join(f"{n} × {k}*" for k, n in self.not_used.items()) or "none"
        return (f"model '{self.config.name}': {len(mapping.entries(self.config))} tensors; "
                f"fresh init: {fresh or 'none'}; source tensors not used by design: {skipped}")


def _base_config(preset: str | None, config_file: str | Path | None) -> ModelConfig | None:
    if preset and config_file:
        raise ValueError("give --preset or --config, not both")
    if preset:
        return get_preset(preset)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"model config file {path} does not exist")
        return ModelConfig.from_dict(json.loads(path.read_text()))
    return None


def _image_token_id(language_dir: Path, base: ModelConfig | None, vocab_size: int) -> tuple[int, Path | None]:
    """From the Qwen3 folder's tokenizer (<|image_pad|>) when it has one, else from the preset/config."""
    if (language_dir / "tokenizer.json").is_file():
        from megatron_infimed.data.tokenizer import load_tokenizer

        token_id = load_tokenizer(language_dir).image_token_id
        tokenizer_dir = language_dir
    elif base is not None:
        token_id, tokenizer_dir = base.image_token_id, None
    else:
        raise ValueError(f"cannot tell the image token id: {language_dir} has no tokenizer.json and no "
                         f"--preset/--config was given")
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"image_token_id {token_id} is outside the vocabulary (vocab_size {vocab_size})")
    return token_id, tokenizer_dir


def _check_part(folder: SafetensorsFolder, part_entries: list[mapping.Entry], prefixes: tuple[str, ...],
                not_used: tuple[str, ...], counts: dict[str, int], part: str) -> Source:
    """Every expected tensor present with its shape; anything else is either known-unused or an error."""
    names = set(folder.names())
    expected = {h: s for e in part_entries for h, s in zip(e.hf, e.hf_shapes)}
    prefix = next((p for p in prefixes if any(p + h in names for h in expected)), prefixes[0])
    missing = [f"'{prefix + h}' {s}" for h, s in expected.items() if prefix + h not in names]
    wrong = [f"'{prefix + h}' has shape {folder.shapes[prefix + h]}, expected {s}"
             for h, s in expected.items() if prefix + h in names and folder.shapes[prefix + h] != s]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): " + ", ".join(missing[:8]))
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:8]))
    extra = sorted(names - {prefix + h for h in expected})
    unexpected = []
    for name in extra:
        rule = next((r for r in not_used if name.startswith(r)), None)
        if rule is None:
            unexpected.append(name)
        else:
            counts[f"{part}: {rule}"] = counts.get(f"{part}: {rule}", 0) + 1
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): " + ", ".join(unexpected[:8]))
    if problems:
        raise ValueError(f"{part} checkpoint {folder.path}: " + " | ".join(problems))
    return Source(folder, prefix)


def _check_lm_head(folder: SafetensorsFolder, language: Source, config: ModelConfig, counts: dict[str, int]) -> None:
    """Untied: lm_head.weight must be there. Tied: it may still be stored, and must equal the embeddings."""
    shape = (config.language.vocab_size, config.language.hidden_size)
    present = "lm_head.weight" in folder.shapes
    if not config.language.tie_word_embeddings:
        if not present or folder.shapes["lm_head.weight"] != shape:
            found = folder.shapes.get("lm_head.weight", "missing")
            raise ValueError(f"language checkpoint {folder.path}: tie_word_embeddings is false, so 'lm_head.weight' "
                             f"{shape} is needed (found: {found})")
        return
    if present:
        if not torch.equal(folder.get("lm_head.weight"), language.get("embed_tokens.weight")):
            raise ValueError(f"language checkpoint {folder.path}: tie_word_embeddings is true but "
                             f"'lm_head.weight' differs from '{language.prefix}embed_tokens.weight'")
        counts["language: lm_head.weight (tied copy)"] = 1


def _check_reduction(config: ModelConfig, config_file: str | Path | None) -> None:
    """The image-token reduction must fit the vision grid; the message says which flag sets it.
    (A preset's reduction fits its own vision encoder, which the checkpoint was checked against.)"""
    try:
        tokens_per_image(config)
    except ValueError as error:
        grid = config.vision.grid_size
        example = f'"reduction": {{"kind": "pool", "pooled_grid": {grid}}}'
        if config_file:
            raise ValueError(
                f"--config {config_file}: {error}; give it a reduction that fits, e.g. {example}"
            ) from None
        raise ValueError(f"the vision encoder has a {grid}x{grid} patch grid, which the default image-token "
                         f"reduction does not fit ({error}); pass --preset NAME (one of {sorted(PRESETS)}) or "
                         f"--config FILE, a model_config.json with a reduction that fits, e.g. {example}") from None


def plan_import(language_dir: str | Path, vision_dir: str | Path | None = None, *, preset: str | None = None,
                config_file: str | Path | None = None, projector: str | Path | None = None) -> ImportPlan:
    """Check everything an import needs; raises ValueError/FileNotFoundError naming the problem."""
    language_dir = Path(language_dir)
    base = _base_config(preset, config_file)
    language = language_from_qwen3(read_config(language_dir, "language"), f"{language_dir}/config.json")
    if vision_dir is not None:
        vision = vision_from_siglip(read_config(Path(vision_dir), "vision"), f"{vision_dir}/config.json")
    elif base is not None:
        vision = base.vision
    else:
        raise ValueError("no --vision folder and no --preset/--config: the vision encoder's dimensions are unknown")
    found = ModelConfig(name="imported", language=language, vision=vision)
    if base is not None:
        diff = mismatches(found.language, base.language, "language.")
        diff += mismatches(found.vision, base.vision, "vision.") if vision_dir is not None else []
        if diff:
            raise ValueError(f"checkpoint does not match model '{base.name}': " + "; ".join(diff))
        found = replace(base, language=language, vision=vision)
    token_id, tokenizer_dir = _image_token_id(language_dir, base, language.vocab_size)
    config = replace(found, image_token_id=token_id)
    _check_reduction(config, config_file)

    counts: dict[str, int] = {}
    sources = {}
    lang_folder = SafetensorsFolder(language_dir, "language")
    sources["language"] = _check_part(lang_folder, mapping.entries(config, ("language",)),
                                      (mapping.HF_PREFIXES["qwen3"]["language"],), ("lm_head.weight",), {}, "language")
    _check_lm_head(lang_folder, sources["language"], config, counts)
    sources["lm_head"] = Source(lang_folder, mapping.HF_PREFIXES["qwen3"]["lm_head"])
    if vision_dir is not None:
        sources["vision"] = _check_part(SafetensorsFolder(vision_dir, "vision"), mapping.entries(config, ("vision",)),
                                        ("", "vision_model."), _NOT_USED["vision"], counts, "vision")
    if projector is not None:
        sources["projector"] = _check_part(SafetensorsFolder(projector, "projector"),
                                           mapping.entries(config, ("projector",)),
                                           (mapping.HF_PREFIXES["infimed"]["projector"], "multi_modal_projector.", ""),
                                           _NOT_USED["projector"], counts, "projector")
    return ImportPlan(config, sources, tokenizer_dir, counts)


@torch.no_grad()
def fill_chunk(chunk, plan: ImportPlan) -> int:
    """Copy every sourced parameter of one pipeline chunk; returns how many were copied."""
    from megatron_infimed.model.init import global_parameter_name
    from megatron_infimed.model.tp_shard import partition_dim, tp_shard

    config = plan.config
    by_name = {e.megatron: e for e in mapping.entries(config)}
    tied_output = "language_model.output_layer.weight"
    copied = 0
    for name, param in chunk.named_parameters():
        global_name = global_parameter_name(chunk, name)
        if global_name == tied_output and config.language.tie_word_embeddings:
            global_name = "language_model.embedding.word_embeddings.weight"
        entry = by_name.get(global_name)
        if entry is None:
            raise KeyError(f"model parameter '{global_name}' has no row in convert.mapping.TABLE")
        source = plan.sources.get(entry.row.part)
        if source is None:
            continue
        full = mapping.join(entry, [source.get(h) for h in entry.hf], config)
        module_name, _, param_name = name.rpartition(".")
        dim = partition_dim(chunk.get_submodule(module_name), param_name)
        piece = tp_shard(full, dim, gated=entry.row.join == "gate_up")
        if piece.shape != param.shape:
            raise ValueError(f"'{global_name}': converted piece has shape {tuple(piece.shape)}, the model "
                             f"expects {tuple(param.shape)}")
        param.copy_(piece)
        copied += 1
    return copied


def import_hf(plan: ImportPlan, output: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 1234) -> Path:
    """Collective: write ``plan``'s model under the current TP/PP layout to ``output``."""
    from megatron.core import parallel_state

    from megatron_infimed.checkpoint.dist import save_weights
    from megatron_infimed.checkpoint.layout import atomic_folder
    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.model.infimed import InfiMedModel
    from megatron_infimed.model.init import initialize_weights

    output = Path(output)
    with atomic_folder(output, owner=torch.distributed.get_rank() == 0) as partial:
        parallel = ParallelConfig(tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
                                  pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size())
        chunk = InfiMedModel(plan.config, pre_process=parallel_state.is_pipeline_first_stage(),
                             post_process=parallel_state.is_pipeline_last_stage(), parallel=parallel, dtype=dtype)
        initialize_weights(chunk, seed)
        fill_chunk(chunk, plan)
        # The tokenizer goes where a training checkpoint keeps it, inside the checksum manifest.
        save_weights(str(partial), [chunk], tokenizer_path=plan.tokenizer_dir)
    torch.distributed.barrier()
    return output
