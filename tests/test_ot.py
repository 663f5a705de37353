"""The cached debiased Sinkhorn term equals geomloss's own debias=True result (value and gradient)."""

from __future__ import annotations

import pytest
import torch
from geomloss import SamplesLoss

from lightning_dv.methods.lossval.ot import CachedSinkhornDivergence


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_cached_term_matches_geomloss_debiased(seed, uniform):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(100, 16, generator=g) + 0.3
    a0 = torch.rand(32, generator=g) + 0.5
    b = torch.full((100,), 0.01) if uniform else torch.ones(100)
    if uniform:
        a0 = a0 / a0.sum()
    diameter = 1.1 * float(torch.cdist(x, y).max())
    a_ref = a0.clone().requires_grad_(True)
    ref = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, diameter=diameter)(a_ref, x, b, y)
    (g_ref,) = torch.autograd.grad(ref, a_ref)
    a = a0.clone().requires_grad_(True)
    div = CachedSinkhornDivergence(y, b, diameter)
    ours = div(a, x)
    (g_ours,) = torch.autograd.grad(ours, a)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)
    # the cache is reused: a second call on other weights matches geomloss too
    a2 = (a0 * 0.7).requires_grad_(True)
    ref2 = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=True, diameter=diameter)(a2, x, b, y)
    assert float(div(a2, x)) == pytest.approx(float(ref2), rel=1e-5, abs=1e-6)


def test_grad_mode_is_restored():
    div = CachedSinkhornDivergence(torch.randn(10, 3), torch.ones(10), diameter=5.0)
    assert torch.is_grad_enabled()
    div(torch.ones(4, requires_grad=True), torch.randn(4, 3))
    assert torch.is_grad_enabled()
    with torch.no_grad():
        div(torch.ones(4), torch.randn(4, 3))
        assert not torch.is_grad_enabled()


def test_empty_target_is_refused():
    with pytest.raises(ValueError, match="J >= 1"):
        CachedSinkhornDivergence(torch.zeros(0, 3), torch.ones(0), diameter=1.0)
