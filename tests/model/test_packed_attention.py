"""A packed micro-batch (THD, cu_seqlens) computes exactly what each sample computes alone:
attention stays inside each sample, RoPE positions restart, images land on their placeholders."""

import pytest
import torch

from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.infimed import InfiMedModel, packed_seq_params
from megatron_infimed.model.init import initialize_weights
from megatron_infimed.model.packed_attention import attention_per_segment
from megatron_infimed.model.token_reduction import tokens_per_image

CONFIG = get_preset("tiny")
IMAGE = CONFIG.image_token_id


@pytest.fixture()
def model(mcore_world):
    from megatron_infimed.runtime import distributed

    if torch.cuda.is_available():  # tools/gpu_check.sh runs these on a GPU: no TF32 in the patch convolution
        torch.backends.cudnn.allow_tf32 = False
    m = InfiMedModel(CONFIG)
    initialize_weights(m, seed=7)
    return m.to(distributed.device())


def sample(length: int, images: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 1000, (length,), generator=g)
    n = tokens_per_image(CONFIG)
    tokens = torch.cat([torch.full((n * images,), IMAGE), text])
    pixels = torch.rand(images, 3, 64, 64, generator=g) * 2 - 1
    return tokens, pixels


def run(model, tokens_list, pixels_list):
    device = next(model.parameters()).device
    tokens = torch.cat(tokens_list).view(1, -1).to(device)
    lengths = [len(t) for t in tokens_list]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    positions = torch.cat([torch.arange(n) for n in lengths]).view(1, -1).to(device)
    images = torch.cat(pixels_list).to(device)
    return model(tokens, positions, images=images, packed_seq_params=packed_seq_params(cu, max(lengths)))


def test_packed_logits_equal_each_sample_alone(model):
    samples = [sample(9, 1, 0), sample(13, 0, 1), sample(5, 2, 2)]
    packed = run(model, [t for t, _ in samples], [p for _, p in samples])
    start = 0
    for tokens, pixels in samples:
        alone = run(model, [tokens], [pixels])
        got = packed[:, start:start + len(tokens)]
        assert torch.allclose(got, alone, atol=1e-5, rtol=1e-5), (got - alone).abs().max()
        start += len(tokens)


def test_packed_gradients_equal_sum_of_sample_gradients(model):
    samples = [sample(9, 1, 3), sample(11, 1, 4)]
    model.zero_grad()
    run(model, [t for t, _ in samples], [p for _, p in samples]).square().mean(-1).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for tokens, pixels in samples:
        run(model, [tokens], [pixels]).square().mean(-1).sum().backward()
    for name, param in model.named_parameters():
        assert torch.allclose(packed_grads[name], param.grad, atol=1e-5, rtol=1e-4), name


def test_rope_positions_restart_per_sample(model):
    """The same text at the start of a pack and after another sample gives the same logits."""
    first, _ = sample(7, 0, 5)
    other, _ = sample(6, 0, 6)
    empty = torch.zeros(0, 3, 64, 64)
    a = run(model, [first, other], [empty])[:, :7]
    b = run(model, [other, first], [empty])[:, 6:]
    assert torch.allclose(a, b, atol=1e-5)


def test_images_change_only_their_own_sample(model):
    tokens_a, pixels_a = sample(8, 1, 8)
    tokens_b, pixels_b = sample(8, 1, 9)
    base = run(model, [tokens_a, tokens_b], [pixels_a, pixels_b])
    changed = run(model, [tokens_a, tokens_b], [pixels_a, -pixels_b])
    n = len(tokens_a)
    assert torch.equal(base[:, :n], changed[:, :n])
    assert not torch.allclose(base[:, n:], changed[:, n:])


def test_per_segment_attention_matches_a_block_diagonal_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(10, 4, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 3, 10])
    out = attention_per_segment(q, k, v, cu, causal=True, scale=8**-0.5)
    mask = torch.zeros(10, 10, dtype=torch.bool)
    for s, e in [(0, 3), (3, 10)]:
        mask[s:e, s:e] = torch.ones(e - s, e - s).tril().bool()
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=8**-0.5).transpose(0, 1)
    assert torch.allclose(out, ref, atol=1e-6)


def test_grouped_query_attention_shares_each_kv_head_across_its_group():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 4, 8, generator=g)
    k, v = torch.randn(5, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)
    out = attention_per_segment(q, k, v, torch.tensor([0, 5]), causal=True, scale=1.0)
    expanded = attention_per_segment(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                     torch.tensor([0, 5]), causal=True, scale=1.0)
    assert torch.equal(out, expanded)


# torch's varlen_attn as each release shaped it: 2.9 (is_causal, default scale, no GQA), 2.10
# (scale, window_size, no GQA), 2.12+ (also enable_gqa). Each fake computes what the real kernel
# would, per segment, and refuses what its release would not take.
def _fake_varlen(query, key, value, cu, scale, causal, gqa_allowed):
    if query.shape[1] != key.shape[1] and not gqa_allowed:
        raise AssertionError("this release's varlen_attn has no GQA: K/V must come repeated")
    return attention_per_segment(query, key, value, cu, causal, scale)


def varlen_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _fake_varlen(query, key, value, cu_seq_q, query.shape[-1] ** -0.5, is_causal, False)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    assert window_size in ((-1, -1), (-1, 0))
    return _fake_varlen(query, key, value, cu_seq_q, scale, window_size == (-1, 0), False)


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    return _fake_varlen(query, key, value, cu_seq_q, scale, window_size == (-1, 0), enable_gqa)


@pytest.mark.parametrize("varlen", [varlen_2_9, varlen_2_10, varlen_2_12])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen_call_fits_every_torch_signature(varlen, causal):
    from megatron_infimed.model.packed_attention import varlen_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(11, 4, 8, generator=g), torch.randn(11, 2, 8, generator=g), torch.randn(11, 2, 8, generator=g)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    expected = attention_per_segment(q, k, v, cu, causal, 0.3)
    got = varlen_attention(varlen, q, k, v, cu, 7, causal, 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
