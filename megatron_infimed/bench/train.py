"""``infimed-bench train``: real (non-padding) tokens per second of forward + backward + optimizer
step, on the same samples and the same small model dimensions:

| side          | model                                  | micro-batch                                      |
|---------------|----------------------------------------|--------------------------------------------------|
| packed        | InfiMedModel (megatron-core, ViT incl.)| one THD pack of ``seq_length`` slots (online BFD) |
| padded        | InfiMedModel                           | ``micro_batch_size`` samples padded to the longest|
| hf_padded     | transformers ``Qwen3ForCausalLM``      | the same padded micro-batches, attention mask     |

What is compared, honestly: the HF model is the language model only. It sees the same token
sequences (image positions as ordinary ``<|image_pad|>`` ids, so the same lengths and labels) but
no vision tower, so the InfiMedModel sides also pay for encoding every image; HF uses its SDPA
attention with a padding mask. All three use ``torch.optim.AdamW``, one step per micro-batch, and
the same real-token count per pass. ``image_token_reduction_speedup`` = packed step time over the
same samples with 729 image tokens per image (no reduction) / with 144 (pooled to 12×12).
"""

from __future__ import annotations

import argparse

import torch

from megatron_infimed.bench.report import BenchResult
from megatron_infimed.bench.timing import alternate, median, synchronize
from megatron_infimed.bench.workload import build_model, make_samples, small_model_config
from megatron_infimed.data.pack import Pack
from megatron_infimed.data.pack_builder import PackLayout, build_pack, build_padded_batch
from megatron_infimed.data.packing import OnlinePacker
from megatron_infimed.model.infimed import packed_seq_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=12, help="samples per pass (each side trains on all)")
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="samples per padded micro-batch")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reduction", action="store_true", help="do not measure 729 vs 144 image tokens")


def packed_batches(samples, capacity: int, layout: PackLayout) -> list[Pack]:
    packer = OnlinePacker(capacity, buffer_size=len(samples))
    groups = [g for s in samples for g in packer.add(s, s.length)] + packer.flush()
    return [build_pack(g, layout) for g in groups]


def padded_batches(samples, micro_batch_size: int, layout: PackLayout) -> list[Pack]:
    return [build_padded_batch(samples[i:i + micro_batch_size], layout)
            for i in range(0, len(samples), micro_batch_size)]


def _device(pack: Pack) -> Pack:
    if not torch.cuda.is_available():
        return pack
    for name in ("tokens", "labels", "loss_weights", "cu_seqlens", "position_ids", "images"):
        setattr(pack, name, getattr(pack, name).cuda())
    return pack


def ours_step(model, optimizer, pack: Pack) -> None:
    per_token = model(pack.tokens.view(1, -1), pack.position_ids.view(1, -1), images=pack.images,
                      packed_seq_params=packed_seq_params(pack.cu_seqlens, pack.max_seqlen),
                      labels=pack.labels.view(1, -1), images_per_sample=pack.images_per_sample,
                      sample_ids=pack.sample_ids)
    w = pack.loss_weights
    loss = (per_token.float().view(-1) * w).sum() / w.sum().clamp(min=1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def hf_model(config):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    lang = config.language
    hf = Qwen3Config(vocab_size=lang.vocab_size, hidden_size=lang.hidden_size,
                     intermediate_size=lang.ffn_hidden_size, num_hidden_layers=lang.num_layers,
                     num_attention_heads=lang.num_attention_heads, num_key_value_heads=lang.num_query_groups,
                     head_dim=lang.kv_channels, max_position_embeddings=lang.max_position_embeddings,
                     rms_norm_eps=lang.norm_epsilon, rope_theta=lang.rotary_base,
                     tie_word_embeddings=lang.tie_word_embeddings, attention_dropout=0.0)
    hf._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(hf)
    return model.cuda() if torch.cuda.is_available() else model


def hf_batches(samples, micro_batch_size: int, pad_id: int = 0) -> list[dict]:
    """The padded micro-batches as transformers takes them: [B, L] ids, attention mask, labels.

    transformers shifts labels itself, so each row gets the *unshifted* targets:
    ``hf_labels[i] = labels[i - 1]`` (ours are already shifted: ``labels[i]`` is the token after ``i``).
    """
    out = []
    for i in range(0, len(samples), micro_batch_size):
        group = samples[i:i + micro_batch_size]
        longest = max(s.length for s in group)
        ids = torch.full((len(group), longest), pad_id, dtype=torch.long)
        labels = torch.full((len(group), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :s.length] = s.input_ids
            labels[r, 1:s.length] = s.labels[:-1]
            mask[r, :s.length] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        out.append({k: v.cuda() for k, v in batch.items()} if torch.cuda.is_available() else batch)
    return out


def hf_step(model, optimizer, batch: dict) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _pass(step, model, optimizer, batches) -> None:
    for batch in batches:
        step(model, optimizer, batch)
    synchronize()


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)


def run(args: argparse.Namespace) -> BenchResult:
    torch.manual_seed(args.seed)
    config = small_model_config(args.hidden_size, args.num_layers)
    samples = make_samples(config, args.samples, args.seq_length, args.seed)
    layout = PackLayout(pad_id=0)
    packs = [_device(p) for p in packed_batches(samples, args.seq_length, layout)]
    padded = [_device(p) for p in padded_batches(samples, args.micro_batch_size, layout)]
    hf_data = hf_batches(samples, args.micro_batch_size)
    real_tokens = sum(s.length for s in samples)
    ours = build_model(config, args.seed)
    ours_opt = _optimizer(ours)
    hf = hf_model(config)
    hf_opt = _optimizer(hf)
    ours.train()
    hf.train()
    # Warm-up, one micro-batch per side: allocator and kernel selection are not timed.
    ours_step(ours, ours_opt, packs[0])
    ours_step(ours, ours_opt, padded[0])
    hf_step(hf, hf_opt, hf_data[0])
    seconds = alternate({
        "packed": lambda: _pass(ours_step, ours, ours_opt, packs),
        "padded": lambda: _pass(ours_step, ours, ours_opt, padded),
        "hf_padded": lambda: _pass(hf_step, hf, hf_opt, hf_data),
    }, repeats=args.repeats, warmup=0)
    rate = {name: real_tokens / median(s) for name, s in seconds.items()}
    slots = {"packed": sum(p.num_tokens for p in packs), "padded": sum(p.num_tokens for p in padded),
             "hf_padded": sum(int(b["input_ids"].numel()) for b in hf_data)}
    fields = {
        "packed_tokens_per_s": rate["packed"], "padded_tokens_per_s": rate["padded"],
        "hf_padded_tokens_per_s": rate["hf_padded"],
        "ratio_vs_padded": rate["packed"] / rate["padded"], "ratio_vs_hf": rate["packed"] / rate["hf_padded"],
        "image_token_reduction_speedup": None,
        "real_tokens": real_tokens, "samples": len(samples), "images": sum(s.num_images for s in samples),
        "slots": slots, "packs": len(packs), "padded_micro_batches": len(padded),
        "seq_length": args.seq_length, "micro_batch_size": args.micro_batch_size,
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers,
                  "vocab_size": config.language.vocab_size, "vision": "1 layer, width 64, 27x27 patches"},
        "repeats": args.repeats,
        "targets": {"ratio_vs_padded": ">= 1.8", "ratio_vs_hf": ">= 1.5"},
    }
    rows = [(name, rate[name], slots[name], real_tokens / slots[name], median(seconds[name]))
            for name in ("packed", "padded", "hf_padded")]
    if not args.skip_reduction:
        fields["image_token_reduction_speedup"], times = reduction_speedup(args)
        rows.append(("packed, 729 tok/image", "-", "-", "-", times[729]))
        rows.append(("packed, 144 tok/image", "-", "-", "-", times[144]))
    notes = [f"{len(samples)} samples from the length mix ({real_tokens} real tokens, "
             f"{fields['images']} images) at seq_length {args.seq_length}; padded micro-batches of "
             f"{args.micro_batch_size}; one AdamW step per micro-batch; median of {args.repeats} passes",
             "hf_padded = transformers Qwen3ForCausalLM, same dimensions, language model only (no vision "
             "tower): the InfiMedModel sides also encode every image"]
    if fields["image_token_reduction_speedup"] is not None:
        notes.append(f"image_token_reduction_speedup = {fields['image_token_reduction_speedup']:.2f}: pass time "
                     f"at 729 vs 144 image tokens per image, same samples and vision tower (CPU-sized: width 64)")
    return BenchResult("train", fields, ("side", "real_tokens_per_s", "slots", "fill", "pass_s"), rows, notes)


def reduction_speedup(args: argparse.Namespace) -> tuple[float, dict[int, float]]:
    """Packed pass time over the same samples at 729 (no reduction) / 144 (pooled) image tokens."""
    sides, times = {}, {}
    for reduce_images in (False, True):
        config = small_model_config(args.hidden_size, args.num_layers, reduce_images=reduce_images)
        samples = make_samples(config, args.samples, args.seq_length, args.seed)
        capacity = max(args.seq_length, max(s.length for s in samples))
        packs = [_device(p) for p in packed_batches(samples, capacity, PackLayout(pad_id=0))]
        model = build_model(config, args.seed)
        model.train()
        optimizer = _optimizer(model)
        ours_step(model, optimizer, packs[0])
        per_image = 144 if reduce_images else 729
        sides[per_image] = (lambda m=model, o=optimizer, p=packs: _pass(ours_step, m, o, p))
    seconds = alternate(sides, repeats=args.repeats, warmup=0)
    times = {k: median(v) for k, v in seconds.items()}
    return times[729] / times[144], times
