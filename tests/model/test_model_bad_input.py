"""Bad input to the model is a ValueError that names the offending sample."""

import pytest
import torch

from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.infimed import InfiMedModel, packed_seq_params
from megatron_infimed.model.init import initialize_weights

CONFIG = get_preset("tiny").with_overrides({"language.max_position_embeddings": 64})


@pytest.fixture(scope="module")
def model(mcore_world):
    m = InfiMedModel(CONFIG)
    initialize_weights(m, seed=1)
    return m


def pack(lengths, image_tokens_per_sample):
    tokens = []
    for length, n in zip(lengths, image_tokens_per_sample):
        t = torch.arange(length) % 100
        t[:n] = CONFIG.image_token_id
        tokens.append(t)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    positions = torch.cat([torch.arange(n) for n in lengths]).view(1, -1)
    return torch.cat(tokens).view(1, -1), positions, packed_seq_params(cu, max(lengths))


def test_placeholder_count_mismatch_names_the_sample(model):
    tokens, positions, params = pack([40, 40], [16, 32])  # sample 'b' has two images' worth of tokens
    images = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"sample 'b': 32 image tokens for 1 image\(s\), expected 16"):
        model(tokens, positions, images=images, packed_seq_params=params,
              images_per_sample=[1, 1], sample_ids=["a", "b"])


def test_missing_image_is_a_mismatch(model):
    tokens, positions, params = pack([30], [16])
    with pytest.raises(ValueError, match="image placeholder / image count mismatch"):
        model(tokens, positions, images=None, packed_seq_params=params)


def test_sample_longer_than_the_model_maximum_names_the_sample(model):
    tokens, positions, params = pack([20, 70], [0, 0])
    with pytest.raises(ValueError, match=r"sample 'long-one' has 70 tokens, longer than .* 64"):
        model(tokens, positions, packed_seq_params=params, sample_ids=["short", "long-one"],
              images_per_sample=[0, 0])


def host_pack(lengths, image_tokens_per_sample, images_per_sample, sample_ids):
    from megatron_infimed.data.pack import IGNORE_INDEX, Pack

    tokens, positions, params = pack(lengths, image_tokens_per_sample)
    total = tokens.numel()
    return Pack(tokens=tokens.view(-1), labels=torch.full((total,), IGNORE_INDEX),
                loss_weights=torch.zeros(total), cu_seqlens=params.cu_seqlens_q, position_ids=positions.view(-1),
                images=torch.zeros(sum(images_per_sample), 3, 64, 64), sample_ids=sample_ids,
                images_per_sample=images_per_sample)


def test_the_host_check_before_a_pack_moves_gives_the_same_errors(model):
    # Training checks packs on the host (no device sync per micro-batch) and tells forward so.
    with pytest.raises(ValueError, match=r"sample 'b': 32 image tokens for 1 image\(s\), expected 16"):
        model.check_pack(host_pack([40, 40], [16, 32], [1, 1], ["a", "b"]))
    with pytest.raises(ValueError, match="sample 'long' has 70 tokens, longer than the model's maximum"):
        model.check_pack(host_pack([70], [0], [0], ["long"]))
    model.check_pack(host_pack([40, 20], [16, 0], [1, 0], ["a", "b"]))  # a good pack passes


def test_a_pack_knows_its_longest_segment_before_it_moves():
    moved = host_pack([40, 20], [16, 0], [1, 0], ["a", "b"]).to("cpu")
    assert moved._max_seqlen == 40 == moved.max_seqlen


def test_uint8_pixels_are_normalised_on_the_device_as_the_host_would(model):
    from megatron_infimed.model.pixels import normalize_images

    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    vision = CONFIG.vision
    with torch.no_grad():
        on_device = model.encode_images(pixels)
        on_host = model.encode_images(normalize_images(pixels, vision.image_mean, vision.image_std))
    assert torch.equal(on_device, on_host)


def test_padding_slots_enter_the_decoder_as_zero_vectors(model):
    from megatron_infimed.data.pack import IGNORE_INDEX
    from megatron_infimed.data.pack_builder import PackLayout, build_pack
    from megatron_infimed.data.preprocess import Sample

    # Context parallelism 2 pads each sample to a multiple of 4: 5 → 8 and 6 → 8, then a trailing segment.
    samples = [Sample(name, "t", torch.arange(3, 3 + n), torch.full((n,), IGNORE_INDEX), torch.zeros(0, 3, 64, 64,
                      dtype=torch.uint8)) for name, n in (("a", 5), ("b", 6))]
    pack = build_pack(samples, PackLayout(context_parallel=2)).padded_to(20, pad_id=0)
    assert pack.padding_ranges == [(5, 8), (14, 16), (16, 20)]
    pack.validate()
    captured = {}
    hook = model.language_model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(hidden=kwargs["hidden_states"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(pack.tokens.view(1, -1), pack.position_ids.view(1, -1),
                  packed_seq_params=packed_seq_params(pack.cu_seqlens, pack.max_seqlen),
                  padding_ranges=pack.padding_ranges)
    finally:
        hook.remove()
    norms = captured["hidden"].squeeze(1).norm(dim=-1)
    padded = torch.zeros(20, dtype=torch.bool)
    for start, end in pack.padding_ranges:
        padded[start:end] = True
    assert bool((norms[padded] == 0).all()) and bool((norms[~padded] > 0).all())
