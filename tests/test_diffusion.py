"""Diffusion maths: float64 identities, closed forms, and samplers driven by an exact denoiser."""
import math

import pytest
import torch

from models.diffusion import (Denoiser, NoiseSchedule, ddim_step, ddpm_step, eps_to_x0,
                              make_betas, min_snr_weight, predict_x0_eps, q_sample,
                              training_target, v_target, v_to_eps, v_to_x0, x0_to_eps)
from models.grids import timestep_subset
from models.guidance import classifier_free_guidance
from models.samplers import ddim_sample, ddpm_sample, sample

KINDS = ("linear", "cosine")


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_basics(kind):
    s = NoiseSchedule(kind, 1000)
    assert s.betas.dtype == torch.float64 and len(s.betas) == 1000
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=0, atol=1e-15)
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()  # strictly decreasing
    assert s.alphas_cumprod[-1] < 1e-4  # the end is (nearly) pure noise


def test_linear_endpoints_and_scaling():
    s = NoiseSchedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    short = make_betas("linear", 250)
    assert short[0].item() == pytest.approx(4e-4) and short[-1].item() == pytest.approx(0.08)


def test_cosine_closed_form():
    """alpha_bar[t] = f(t+1) / f(0) with f(u) = cos^2(((u/T + s)/(1 + s)) pi/2), where unclipped."""
    T, s = 1000, 0.008
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    sched = NoiseSchedule("cosine", T)
    for t in (0, 10, 500, 900):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert sched.betas[-1].item() == 0.999  # the clip is active at the end


def test_q_sample_equals_its_formula():
    s = NoiseSchedule("cosine", 1000)
    x0, eps = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2,
                                                                         dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.equal(q_sample(s, x0, t, eps), a.sqrt() * x0 + (1 - a).sqrt() * eps)


@pytest.mark.parametrize("kind", KINDS)
def test_conversions_round_trip(kind):
    s = NoiseSchedule(kind, 1000)
    x0, eps = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 500, 900, 998])
    x_t = q_sample(s, x0, t, eps)
    v = v_target(s, x0, t, eps)
    tol = dict(rtol=0, atol=1e-9)
    assert torch.allclose(eps_to_x0(s, x_t, t, eps), x0, **tol)
    assert torch.allclose(x0_to_eps(s, x_t, t, x0), eps, rtol=0, atol=1e-6)
    assert torch.allclose(v_to_x0(s, x_t, t, v), x0, **tol)
    assert torch.allclose(v_to_eps(s, x_t, t, v), eps, **tol)
    for kind_ in ("epsilon", "x0", "v"):
        out = training_target(s, x0, t, eps, kind_)
        x0_hat, eps_hat = predict_x0_eps(s, out, t, x_t, kind_)
        assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-6)
        assert torch.allclose(eps_hat, eps, rtol=0, atol=1e-6)


def test_ddpm_step_is_the_posterior_of_ho_eq_7():
    """With the true x0 and zero noise the step returns mu-tilde; the noise scale is beta-tilde."""
    s = NoiseSchedule("linear", 1000)
    x0, eps = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    t = 400
    x_t = q_sample(s, x0, t, eps)
    a, a_prev, b = s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]
    mu = (a_prev.sqrt() * b / (1 - a)) * x0 + ((1 - b).sqrt() * (1 - a_prev) / (1 - a)) * x_t
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(ddpm_step(s, x0, t, x_t, noise=zero), mu, atol=1e-12)
    one = torch.ones(3, dtype=torch.float64)
    var = b * (1 - a_prev) / (1 - a)
    assert torch.allclose(ddpm_step(s, x0, t, x_t, noise=one) - mu, var.sqrt() * one)
    assert torch.equal(ddpm_step(s, x0, 0, x_t, noise=one),
                       ddpm_step(s, x0, 0, x_t, noise=zero))  # no noise at t = 0


def test_ddim_last_step_returns_x0_and_eta0_is_deterministic():
    s = NoiseSchedule("cosine", 1000)
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x_t = q_sample(s, x0, 30, eps)
    assert torch.allclose(ddim_step(s, x0, eps, 30, -1, x_t), x0, atol=1e-9)
    # eta = 0 from t to t_prev: the same x0 and eps, re-noised deterministically
    expected = q_sample(s, x0, 10, eps)
    assert torch.allclose(ddim_step(s, x0, eps, 30, 10, x_t), expected, atol=1e-9)
    denoiser = Denoiser(lambda x, t, y: 0.5 * x, s, "epsilon")
    start = torch.randn(8, dtype=torch.float64)
    assert torch.equal(ddim_sample(denoiser, start, steps=20).x,
                       ddim_sample(denoiser, start, steps=20).x)


@pytest.mark.parametrize("steps, start", [(1000, None), (50, None), (7, None), (1, None),
                                          (5000, None), (10, 200), (300, 40), (3, 0)])
def test_timestep_subsets_stay_in_range(steps, start):
    ts = timestep_subset(1000, steps, start)
    top = 999 if start is None else start
    assert ts[0] == top and ts == sorted(set(ts), reverse=True)
    assert len(ts) == min(steps, top + 1)
    assert ts[-1] == 0 or steps == 1  # one step jumps straight from the top to x0


MU, STD, N = 0.4, 0.5, 20000


def oracle(schedule, prediction_type="epsilon") -> Denoiser:
    """The ideal denoiser for data N(MU, STD^2): E[eps | x_t], as a network predicting eps, x0
    or v, wrapped in the Denoiser under test."""
    def net(x, t, labels):
        a = schedule.alphas_cumprod[t].to(x.dtype)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
        x0 = eps_to_x0(schedule, x, t, eps)
        return {"epsilon": eps, "x0": x0, "v": v_target(schedule, x0, t, eps)}[prediction_type]
    return Denoiser(net, schedule, prediction_type)


SAMPLERS = {  # name: (kwargs for sample(), respaced DDPM or DDIM, eta)
    "ddpm-1000": ("ddpm", 1000, 0.0),
    "ddpm-100-strided": ("ddpm", 100, 0.0),
    "ddim-50-eta0": ("ddim", 50, 0.0),
    "ddim-50-eta1": ("ddim", 50, 1.0),
}


def exact_moments(schedule, sampler, steps, eta):
    """Mean and std of the sampler's output, propagated in closed form.

    With Gaussian data the ideal denoiser is linear in x_t: x0_hat = MU + k0 (x_t - sqrt(a) MU),
    eps_hat = ke (x_t - sqrt(a) MU), with k0 = sqrt(a) STD^2 / V and ke = sqrt(1 - a) / V,
    V = a STD^2 + 1 - a. Each step is then x' = sqrt(a') MU + c (x - sqrt(a) MU) + sigma z, so
    mean and variance follow exactly, starting from x_T ~ N(0, 1). Written independently of the
    code under test (only alpha_bar is shared).
    """
    abar = schedule.alphas_cumprod.tolist()
    ts = timestep_subset(schedule.timesteps, steps)
    mean, var = 0.0, 1.0
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        a, a_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        v_t = a * STD ** 2 + 1 - a
        k0, ke = math.sqrt(a) * STD ** 2 / v_t, math.sqrt(1 - a) / v_t
        if sampler == "ddpm":  # posterior q(x_t' | x_t, x0) of the respaced chain, Ho et al. eq. 7
            beta = 1 - a / a_p
            c = math.sqrt(a_p) * beta / (1 - a) * k0 + math.sqrt(1 - beta) * (1 - a_p) / (1 - a)
            sigma2 = beta * (1 - a_p) / (1 - a) if t_prev >= 0 else 0.0
        else:  # Song et al. 2021, eq. 12 and 16
            sigma2 = eta ** 2 * (1 - a_p) / (1 - a) * (1 - a / a_p)
            c = math.sqrt(a_p) * k0 + math.sqrt(1 - a_p - sigma2) * ke
        mean = math.sqrt(a_p) * MU + c * (mean - math.sqrt(a) * MU)
        var = c * c * var + sigma2
    return mean, math.sqrt(var)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_with_the_exact_denoiser_match_closed_form_moments(kind, prediction_type, name):
    """Samples' mean and std within 4 standard errors (std/sqrt(N), std/sqrt(2N)) of the exact
    moments of that sampler, which in turn approach N(MU, STD^2)."""
    sampler, steps, eta = SAMPLERS[name]
    torch.manual_seed(0)
    s = NoiseSchedule(kind, 1000)
    x = sample(oracle(s, prediction_type), torch.randn(N, dtype=torch.float64), sampler,
               steps, eta).x
    mean, std = exact_moments(s, sampler, steps, eta)
    assert abs(x.mean().item() - mean) < 4 * std / math.sqrt(N)
    assert abs(x.std().item() - std) < 4 * std / math.sqrt(2 * N)
    assert abs(mean - MU) < 0.002
    # All 1000 ancestral steps recover the data; fewer steps lose some variance (beta-tilde
    # ignores the uncertainty of x0, Ho et al. 2020 sec. 3.2; DDIM's ODE steps are coarse).
    assert abs(std - STD) < (0.005 if steps == 1000 else 0.06)


def test_denoising_from_an_intermediate_t_keeps_the_distribution():
    torch.manual_seed(1)
    s = NoiseSchedule("cosine", 1000)
    x0 = MU + STD * torch.randn(N, dtype=torch.float64)
    x_t = q_sample(s, x0, 300, torch.randn(N, dtype=torch.float64))
    for out in (ddpm_sample(oracle(s), x_t, start_t=300).x,
                ddim_sample(oracle(s), x_t, steps=30, start_t=300).x):
        assert abs(out.mean().item() - MU) < 4 * STD / math.sqrt(N)
        assert abs(out.std().item() - STD) < 4 * STD / math.sqrt(2 * N) + 0.005
    # and the result still remembers x0: a low t only perturbs it slightly
    x_low = q_sample(s, x0, 20, torch.randn(N, dtype=torch.float64))
    back = ddim_sample(oracle(s), x_low, steps=10, start_t=20).x
    assert torch.corrcoef(torch.stack([back, x0]))[0, 1] > 0.95


def test_snapshots_record_x_t_and_predicted_x0():
    s = NoiseSchedule("linear", 100)
    x, frames = ddim_sample(oracle(s), torch.randn(10, dtype=torch.float64), steps=20,
                            snapshots=5)
    assert [t for t, _, _ in frames][0] == 99 and len(frames) == 5
    assert frames[-1][2].shape == x.shape


@pytest.mark.parametrize("prediction_type", ["epsilon", "x0", "v"])
def test_classifier_free_guidance(prediction_type):
    """Guidance on the network output is the same combination of x0 and eps (they are affine in
    it): scale 0 is unconditional, 1 conditional, w extrapolates by w."""
    s = NoiseSchedule("cosine", 100)

    def net(x, t, labels):  # conditional output depends on the label, null class -> 0
        return 0.3 * x + labels.to(x.dtype)[:, None]
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([5, 50, 90, 99])
    y, null = torch.tensor([1, 2, 3, 1]), 0
    plain = Denoiser(net, s, prediction_type)
    x0_c, eps_c = plain(x, t, y)
    x0_u, eps_u = plain(x, t, torch.zeros_like(y))
    for w in (0.0, 1.0, 3.0):
        x0_w, eps_w = classifier_free_guidance(plain, w, null)(x, t, y)
        assert torch.allclose(x0_w, x0_u + w * (x0_c - x0_u), atol=1e-9)
        assert torch.allclose(eps_w, eps_u + w * (eps_c - eps_u), atol=1e-9)


def test_min_snr_weights():
    s = NoiseSchedule("cosine", 1000)
    t = torch.tensor([0, 500, 999])
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    w = min_snr_weight(s, t, "epsilon", gamma=5.0).double()
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr, rtol=1e-6)
    assert w[-1].item() == pytest.approx(1.0)  # low-SNR steps keep full weight


def test_log_snr():
    s = NoiseSchedule("linear", 1000)
    a = s.alphas_cumprod
    assert torch.allclose(s.log_snr(), torch.log(a / (1 - a)), rtol=1e-12)
