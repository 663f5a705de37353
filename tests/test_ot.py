"""LossVal's OT term: the cached geomloss path (``ot="exact"``) and our solver (``ot="fast"``) both
equal geomloss's own debias=True result (value and gradient in the masses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss

from lightning_dv.methods.lossval.ot import CachedSinkhornDivergence
from lightning_dv.methods.lossval.sinkhorn import SinkhornDivergence, epsilon_schedule


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


# -- our solver (LossVal(ot="fast")) against geomloss -------------------------------------------
def _geomloss_debiased(a, x, b, y, diameter, p=2):
    return SamplesLoss("sinkhorn", p=p, blur=0.05, scaling=0.5, debias=True, diameter=diameter)(a, x, b, y)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_solver_matches_geomloss_value_and_mass_gradient(seed, uniform, p):
    """Same value to 1e-5 relative and the same gradient in the masses to 1e-5 of its scale,
    with a negative weight in the batch (geomloss: no mass) and unequal raw masses."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(100, 16, generator=g) + 0.3
    a0 = torch.rand(32, generator=g) + 0.5
    a0[5] = -0.3
    b = torch.full((100,), 0.01) if uniform else torch.ones(100)
    if uniform:
        a0 = a0.clamp(min=0) / a0.clamp(min=0).sum()
    diameter = 1.1 * float(torch.cdist(x, y).max())
    a_ref = a0.clone().requires_grad_(True)
    ref = _geomloss_debiased(a_ref, x, b, y, diameter, p)
    (g_ref,) = torch.autograd.grad(ref, a_ref)
    a = a0.clone().requires_grad_(True)
    ours = SinkhornDivergence(y, b, diameter, p=p)(a, x)
    (g_ours,) = torch.autograd.grad(ours, a)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max()))


def test_fast_solver_matches_geomloss_with_near_duplicates_and_all_negative_weights():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(60, 4, generator=g)
    x = torch.cat([y[:10] + 1e-3 * torch.randn(10, 4, generator=g), torch.randn(6, 4, generator=g)])
    diameter = 1.1 * float(torch.cdist(x, y).max())
    div = SinkhornDivergence(y, torch.ones(60), diameter)
    for a0 in (torch.rand(16, generator=g) + 0.1, -torch.ones(16)):
        a_ref, a = a0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
        ref, ours = _geomloss_debiased(a_ref, x, torch.ones(60), y, diameter), div(a, x)
        (g_ref,), (g_ours,) = torch.autograd.grad(ref, a_ref), torch.autograd.grad(ours, a)
        assert float(ours) == pytest.approx(float(ref), rel=1e-5, abs=1e-4)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max()))


@pytest.mark.parametrize("p", [1, 2])
def test_epsilon_schedule_is_geomloss_schedule(p):
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule as geomloss_schedule

    for diameter in (0.05, 0.3, 1.0, 23.5, 400.0):
        for blur, scaling in ((0.05, 0.5), (0.01, 0.7), (0.1, 0.3)):
            ours, ref = (
                epsilon_schedule(p, diameter, blur, scaling),
                geomloss_schedule(p, diameter, blur, scaling),
            )
            np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_self_term_exact_and_identity_plan_bound():
    """OT(b, b) solved on the J x J problem equals geomloss's; above ``exact_self_max`` the
    identity plan's value stays within the stated bound ``m_b eps log J / 2`` of it."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(300, 8, generator=g)
    loss = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, debias=False, diameter=12.0)
    for b in (torch.ones(300), torch.full((300,), 1 / 300)):
        exact = SinkhornDivergence(y, b, 12.0).self_term
        assert exact == pytest.approx(float(loss(b, y, b, y)), rel=1e-4, abs=1e-5)
        bound = SinkhornDivergence(y, b, 12.0, exact_self_max=100).self_term
        assert abs(bound - exact) <= float(b.sum()) * 0.05**2 * np.log(300) / 2 + 1e-6


def test_fast_solver_refuses_points_that_require_grad():
    div = SinkhornDivergence(torch.randn(10, 3), torch.ones(10), diameter=5.0)
    with pytest.raises(ValueError, match="ot='exact'"):
        div(torch.ones(4), torch.randn(4, 3, requires_grad=True))


def test_fast_solver_at_j_10000_needs_no_j_by_j_matrix():
    """J = 10,000: no J x J self-term (identity-plan value), one step in well under a second."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(10_000, 16, generator=g)
    div = SinkhornDivergence(y, torch.ones(10_000), diameter=30.0)
    a = torch.ones(32, requires_grad=True)
    d = div(a, torch.randn(32, 16, generator=g))
    d.backward()
    assert torch.isfinite(d) and torch.isfinite(a.grad).all()
    assert div.self_term == pytest.approx(0.0, abs=1e-3)  # raw unit masses: eps * sum b log b = 0


# -- a coarser annealing (LossVal(ot_scaling=...)) against geomloss at that scaling -------------
def _geomloss_at(scaling, a, x, b, y, diameter):
    return SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=scaling, debias=True, diameter=diameter)(
        a, x, b, y
    )


@pytest.mark.parametrize("solve_scaling", [0.3, 0.1])
def test_coarser_annealing_is_geomloss_at_that_scaling_plus_the_reference_offsets(solve_scaling):
    """``solve_scaling`` anneals the potentials as geomloss does at that scaling; ``D``'s raw-mass
    offsets stay those of ``scaling``. geomloss on coincident clouds (zero cost: its normalised
    potentials vanish) gives each schedule's offset term alone, so

        ours(0.5, solve s) = geomloss_s(x, y) + [geomloss_0.5 - geomloss_s](coincident clouds),

    and the gradient equals geomloss_s's up to a constant shared by the rows. Uniform masses have
    no offsets: ours equals geomloss at scaling ``s``."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 16, generator=g), torch.randn(100, 16, generator=g) + 0.3
    a0 = torch.rand(32, generator=g) + 0.5
    diameter = 1.1 * float(torch.cdist(x, y).max())
    b = torch.ones(100)
    a_ref, a = a0.clone().requires_grad_(True), a0.clone().requires_grad_(True)
    ref = _geomloss_at(solve_scaling, a_ref, x, b, y, diameter)
    (g_ref,) = torch.autograd.grad(ref, a_ref)
    zx, zy = torch.zeros(32, 16), torch.zeros(100, 16)
    offsets = _geomloss_at(0.5, a0, zx, b, zy, diameter) - _geomloss_at(
        solve_scaling, a0, zx, b, zy, diameter
    )
    div = SinkhornDivergence(y, b, diameter, scaling=0.5, solve_scaling=solve_scaling)
    assert len(div.solve_eps) < len(div.eps_list)
    ours = div(a, x)
    (g_ours,) = torch.autograd.grad(ours, a)
    assert float(ours) == pytest.approx(float(ref + offsets), rel=1e-5)
    centred_ref, centred = g_ref - g_ref.mean(), g_ours - g_ours.mean()
    torch.testing.assert_close(centred, centred_ref, rtol=1e-4, atol=1e-4 * float(centred_ref.abs().max()))
    # uniform masses: no offsets, so the whole result is geomloss's at the coarser scaling
    au, bu = (a0 / a0.sum()).requires_grad_(True), torch.full((100,), 0.01)
    au_ref = au.detach().clone().requires_grad_(True)
    ref_u = _geomloss_at(solve_scaling, au_ref, x, bu, y, diameter)
    ours_u = SinkhornDivergence(y, bu, diameter, scaling=0.5, solve_scaling=solve_scaling)(au, x)
    assert float(ours_u) == pytest.approx(float(ref_u), rel=1e-5, abs=1e-6)
    (gu_ref,), (gu,) = torch.autograd.grad(ref_u, au_ref), torch.autograd.grad(ours_u, au)
    torch.testing.assert_close(gu, gu_ref, rtol=1e-5, atol=1e-5 * float(gu_ref.abs().max()))


def test_schedule_arguments_are_validated():
    y = torch.randn(10, 3)
    with pytest.raises(ValueError, match="`solve_scaling` must be in \\(0, 1\\)"):
        SinkhornDivergence(y, torch.ones(10), diameter=5.0, solve_scaling=1.0)
    with pytest.raises(ValueError, match="`scaling` must be in \\(0, 1\\)"):
        SinkhornDivergence(y, torch.ones(10), diameter=5.0, scaling=0.0)
    with pytest.raises(ValueError, match="`blur` must be > 0"):
        SinkhornDivergence(y, torch.ones(10), diameter=5.0, blur=0.0)
    with pytest.raises(ValueError, match="`diameter` must be > 0"):
        SinkhornDivergence(y, torch.ones(10), diameter=-1.0)
