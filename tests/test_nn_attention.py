"""The one attention module's voice-side features: key-padding masks, the fused qkv layout,
the KV cache and the attention probabilities (the DiT's side is in test_dit.py)."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close_fp32

from tinysora.nn.attention import Attention, KVCache, key_padding_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def fused(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(32, 4, qk_norm=False, fused=True, out_name="proj").eval()


def test_padded_keys_are_ignored_in_both_forms():
    attn = fused()
    x = torch.randn(2, 9, 32)
    mask = key_padding_mask(torch.tensor([9, 5]), 9)
    assert mask.shape == (2, 1, 1, 9) and key_padding_mask(None, 9) is None
    with torch.no_grad():
        padded = attn(x, mask=mask, sdpa=True)
        explicit = attn(x, mask=mask, sdpa=False)
        alone = attn(x[1:, :5], sdpa=True)  # the short row without its padding
        x[1, 5:] = 100.0  # what padding holds does not matter
        changed = attn(x, mask=mask, sdpa=True)
    assert_close_fp32(explicit, padded)
    assert_close_fp32(padded[1, :5], alone[0])
    assert_close_fp32(changed[1, :5], padded[1, :5])


def test_fused_qkv_computes_what_separate_projections_do():
    a = fused()
    b = Attention(32, 4, qk_norm=False, out_name="proj").eval()
    with torch.no_grad():
        q, kv = a.qkv.weight.split([32, 64]), a.qkv.bias.split([32, 64])
        b.q.weight.copy_(q[0]), b.kv.weight.copy_(q[1])
        b.q.bias.copy_(kv[0]), b.kv.bias.copy_(kv[1])
        b.proj.load_state_dict(a.proj.state_dict())
        x = torch.randn(2, 6, 32)
        assert_close_fp32(b(x, sdpa=True), a(x, sdpa=True))
    assert set(a.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    with pytest.raises(ValueError, match="not a context"):
        a(x, context=x)


def test_kv_cache_one_position_at_a_time_equals_the_causal_whole():
    attn = fused()
    x = torch.randn(1, 7, 32)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        whole = attn(x, mask=causal, sdpa=True)
        cache = KVCache()
        first = attn(x[:, :3], mask=causal[..., :3, :3], cache=cache, sdpa=True)
        steps = [attn(x[:, i : i + 1], cache=cache, sdpa=True) for i in range(3, 7)]
    assert cache.k.shape == (1, 4, 7, 8)
    assert_close_fp32(torch.cat([first, *steps], dim=1), whole)


def test_probabilities_sum_to_one_and_skip_masked_keys():
    attn = fused()
    x = torch.randn(2, 5, 32)
    mask = key_padding_mask(torch.tensor([5, 3]), 5)
    with torch.no_grad():
        y, probs = attn(x, mask=mask, sdpa=True, probs=True)  # probs: the explicit form
        assert_close_fp32(y, attn(x, mask=mask, sdpa=True))
    assert probs.shape == (2, 4, 5, 5) and probs.dtype == torch.float32
    assert_close_fp32(probs.sum(-1), torch.ones(2, 4, 5))
    assert float(probs[1, :, :, 3:].abs().max()) == 0.0
