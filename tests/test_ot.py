"""LossVal's OT term: the cached geomloss path (``ot="exact"``) and our solver (``ot="fast"``) both
equal geomloss's own debias=True result (value and gradient in the masses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss

from lightning_dv import LossVal
from lightning_dv.methods.lossval import host
from lightning_dv.methods.lossval.host import _kernel_loop, kernel_potentials, normalised_masses
from lightning_dv.methods.lossval.objective import DEFAULT_OT_SCALING
from lightning_dv.methods.lossval.ot import CachedSinkhornDivergence
from lightning_dv.methods.lossval.sinkhorn import (
    ZERO_MASS_LOG,
    SinkhornDivergence,
    annealed_potentials,
    epsilon_schedule,
    log_weights,
)


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


@pytest.mark.parametrize("host", [True, False])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_solver_matches_geomloss_value_and_mass_gradient(seed, uniform, p, host):
    """Same value to 1e-5 relative and the same gradient in the masses to 1e-5 of its scale,
    with a negative weight in the batch (geomloss: no mass) and unequal raw masses; both loops
    (the host's numpy kernel and the torch log-domain loop)."""
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
    div = SinkhornDivergence(y, b, diameter, p=p, host_max_entries=None if host else 0)
    if host:  # the host loop takes this batch (no fallback to the torch loop)
        assert div._host_solve(a0, x) is not None
    ours = div(a, x)
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


@pytest.mark.parametrize("solve_scaling", [0.3, 0.2, 0.1])
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


@pytest.mark.parametrize("ot_scaling", [None, 0.5, 0.3])  # None: DEFAULT_OT_SCALING (0.2)
@pytest.mark.parametrize(("batch", "dim"), [(32, 16), (128, 3072)])  # MLP and CNN workloads
def test_lossval_solver_is_float64_geomloss_at_its_schedule(batch, dim, ot_scaling):
    """The solver ``LossVal(ot_scaling=...)`` builds (the default: ``DEFAULT_OT_SCALING`` = 0.2)
    against geomloss in float64 at the scaling it anneals at, plus the difference of that
    schedule's and 0.5's offset terms (zero at 0.5), on the host loop's numpy (MLP) and torch-pass
    (CNN-wide) kernels; raw masses, some weights <= 0. The coarse schedules run the checked loop
    (rows whose log-sums leave float64's range redone in the log domain)."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(batch, dim, generator=g), torch.randn(100, dim, generator=g) + 0.3
    a0 = torch.rand(batch, generator=g) + 0.5
    a0[:2] = torch.tensor([0.0, -0.3])  # LossVal's weights do go negative
    diameter = 1.1 * float(torch.cdist(x, y).max())
    b = torch.ones(100)
    solve = DEFAULT_OT_SCALING if ot_scaling is None else ot_scaling
    assert DEFAULT_OT_SCALING == 0.2
    div = LossVal(validation=y, ot_scaling=ot_scaling)._solver(y, b, diameter)
    assert div.solve_eps == epsilon_schedule(2, diameter, 0.05, solve)
    assert div.eps_list == epsilon_schedule(2, diameter, 0.05, 0.5)  # D's offsets: geomloss's 0.5
    x64, y64, b64 = x.double(), y.double(), b.double()
    a_ref = a0.double().requires_grad_(True)
    ref = _geomloss_at(solve, a_ref, x64, b64, y64, diameter)
    (g_ref,) = torch.autograd.grad(ref, a_ref)
    z_x, z_y, a64 = torch.zeros_like(x64), torch.zeros_like(y64), a0.double()
    offsets = _geomloss_at(0.5, a64, z_x, b64, z_y, diameter) - _geomloss_at(
        solve, a64, z_x, b64, z_y, diameter
    )
    a = a0.clone().requires_grad_(True)
    ours = div(a, x)
    (g_ours,) = torch.autograd.grad(ours, a)
    assert float(ours.detach()) == pytest.approx(float(ref + offsets), rel=1e-6)
    live = a0 > 0  # geomloss's gradient on rows of no mass is its -1e5 log-mass term, ours the same
    centred_ref, centred = (
        g_ref[live] - g_ref[live].mean(),
        g_ours.double()[live] - g_ours.double()[live].mean(),
    )
    torch.testing.assert_close(centred, centred_ref, rtol=0, atol=2e-5 * float(centred_ref.abs().max()))


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


# -- the host loop (numpy float64, kernel domain) on its hard cases --------------------------------
@pytest.fixture(params=["numpy", "torch"])
def matrix_passes(request, monkeypatch):
    """The host loop's passes over the matrix in numpy (small problems) or as torch ops (from
    ``TORCH_MIN_ENTRIES`` entries on): every host test runs both."""
    monkeypatch.setattr(host, "TORCH_MIN_ENTRIES", 0 if request.param == "torch" else 10**9)
    return request.param


@pytest.mark.parametrize("blur", [0.05, 0.01, 0.001])
@pytest.mark.parametrize("masses", ["positive", "some zero", "all negative"])
def test_host_loop_matches_float64_geomloss_on_wide_scales_and_small_blur(blur, masses, matrix_passes):
    """Features of scale 10 and small ``blur``: the unchecked kernel under/overflows, the checked
    rerun recomputes those steps in the log domain; rows of no mass get geomloss's -1e5 log-mass
    (not zero: it leaks at small eps). Against geomloss in float64: 1e-5 relative (the float32
    cost matrix's rounding, amplified by 1 / eps = 1e6 at blur 0.001)."""
    g = torch.Generator().manual_seed(7)
    x, y = 10 * torch.randn(16, 8, generator=g), 10 * torch.randn(40, 8, generator=g)
    a0 = torch.rand(16, generator=g) + 0.5
    if masses == "some zero":
        a0[3], a0[7] = -1.0, 0.0
    elif masses == "all negative":
        a0 = -a0
    diameter = 1.1 * float(torch.cdist(x, y).max())
    div = SinkhornDivergence(y, torch.ones(40), diameter, blur=blur)
    alpha, log_ma = normalised_masses(a0.double().numpy(), ZERO_MASS_LOG)
    args = (div.solve_eps, div._host_cost(x), alpha, div._beta_host, ZERO_MASS_LOG - log_ma)
    if masses != "all negative":  # (all negative: uniform masses, the kernel never leaves its range)
        with np.errstate(all="ignore"):
            assert _kernel_loop(*args, checked=False) is None  # this case needs the checked rerun
    assert kernel_potentials(*args) is not None
    value, grad = div._host_solve(a0, x)
    a_ref = a0.double().clone().requires_grad_(True)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.5, debias=True, diameter=diameter)
    ref = loss(a_ref, x.double(), torch.ones(40, dtype=torch.float64), y.double())
    (g_ref,) = torch.autograd.grad(ref, a_ref)
    assert float(value) == pytest.approx(float(ref), rel=1e-5)
    torch.testing.assert_close(grad, g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max()))


@pytest.mark.parametrize(("scale", "blur"), [(1.0, 0.05), (10.0, 0.001)])
def test_host_potentials_equal_the_torch_loop_in_float64(scale, blur, matrix_passes):
    """The kernel-domain loop is the same iteration as the log-domain one: on the same float64
    cost, the potentials agree to 1e-9, rows of no mass included (also where the unchecked kernel
    overflows and where geomloss's -1e5 log-mass leaks)."""
    g = torch.Generator().manual_seed(7)
    x, y = scale * torch.randn(16, 8, generator=g), scale * torch.randn(40, 8, generator=g)
    a = torch.rand(16, generator=g) + 0.2
    a[3], a[7] = -1.0, 0.0
    div = SinkhornDivergence(y, torch.ones(40), 1.1 * float(torch.cdist(x, y).max()), blur=blur)
    cost = div._host_cost(x)
    alpha, log_ma = normalised_masses(a.double().numpy(), ZERO_MASS_LOG)
    ours = kernel_potentials(div.solve_eps, cost, alpha, div._beta_host, ZERO_MASS_LOG - log_ma)
    log_alpha = log_weights(a.double()) - torch.logsumexp(log_weights(a.double()), 0)
    ref = annealed_potentials(div.solve_eps, torch.from_numpy(cost), log_alpha, div.log_beta.double())
    for mine, theirs in zip(ours, ref):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-9, atol=1e-9)


def test_wide_inputs_and_the_size_switch_give_the_same_divergence():
    """CNN-like batch (128 x 3072 features) on the host against the torch loop, and a problem
    above ``host_max_entries`` (torch loop) against the host forced on it."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(128, 3072, generator=g), torch.rand(100, 3072, generator=g)
    diameter = 1.1 * float(torch.cdist(x, y).max())
    a0 = torch.rand(128, generator=g) + 0.5
    results = []
    for host_max in (None, 0):
        a = a0.clone().requires_grad_(True)
        d = SinkhornDivergence(y, torch.ones(100), diameter, host_max_entries=host_max)(a, x)
        results.append((float(d), torch.autograd.grad(d, a)[0]))
    (v_host, g_host), (v_torch, g_torch) = results
    assert v_host == pytest.approx(v_torch, rel=1e-5)
    torch.testing.assert_close(g_host, g_torch, rtol=1e-5, atol=1e-5 * float(g_torch.abs().max()))
    small = SinkhornDivergence(y[:20, :8], torch.ones(20), 5.0, host_max_entries=1)
    assert small.host_max_entries == 1  # 128 * 148 > 1: the torch loop
    forced = SinkhornDivergence(y[:20, :8], torch.ones(20), 5.0, host_max_entries=10**9)
    xs = x[:, :8]
    assert float(small(a0, xs)) == pytest.approx(float(forced(a0, xs)), rel=1e-5)


def test_host_cost_is_the_ground_cost_with_an_exactly_symmetric_self_block():
    """``[C_xy | C_xx]`` from numpy's float32 products (``x x^T`` by a symmetric rank-k update)
    equals ``|x - y|^2 / 2`` in float64 to float32 rounding; ``C_xx`` is exactly symmetric with an
    exactly zero diagonal (the batch's self-problem sees no rounding asymmetry)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 300, generator=g), torch.randn(50, 300, generator=g)
    cost = SinkhornDivergence(y, torch.ones(50), 60.0)._host_cost(x)
    ref = torch.cdist(x.double(), torch.cat([y, x]).double()).pow(2).div(2).numpy()
    np.testing.assert_allclose(cost, ref, rtol=0, atol=1e-5 * ref.max())
    c_xx = cost[:, 50:]
    assert np.array_equal(c_xx, c_xx.T)
    assert not np.diagonal(c_xx).any()


def test_matrix_passes_in_numpy_and_torch_give_the_same_potentials():
    """The two ways of running the loop's passes over the matrix agree to 1e-12 on a CNN-shaped
    problem (128 x 228 entries, 3072 features, rows of no mass included)."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(128, 3072, generator=g), torch.randn(100, 3072, generator=g)
    a = torch.rand(128, generator=g) + 0.5
    a[5] = -1.0
    div = SinkhornDivergence(y, torch.ones(100), 1.1 * float(torch.cdist(x, y).max()))
    alpha, log_ma = normalised_masses(a.double().numpy(), ZERO_MASS_LOG)
    args = (div.solve_eps, div._host_cost(x), alpha, div._beta_host, ZERO_MASS_LOG - log_ma)
    saved, out = host.TORCH_MIN_ENTRIES, []
    try:
        for threshold in (0, 10**9):
            host.TORCH_MIN_ENTRIES = threshold
            out.append(kernel_potentials(*args))
    finally:
        host.TORCH_MIN_ENTRIES = saved
    for mine, theirs in zip(*out):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12 * np.abs(theirs).max())
