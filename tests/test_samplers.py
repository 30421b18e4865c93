"""The fast samplers and flow matching against closed forms.

For data N(MU, STD^2) the probability-flow ODE is solved exactly: in a noise schedule's sigma
space (x~ = x / alpha, s = sigma / alpha) x~(s) = MU + (x~_T - MU) sqrt(STD^2 + s^2) /
sqrt(STD^2 + s_T^2); on the flow path x_t = (1 - t) MU + sqrt((1 - t)^2 STD^2 + t^2) x_1. So a
deterministic sampler driven by the exact denoiser must approach that endpoint, with an error
that halves (first order) or quarters (second order) when the steps double.
"""
import math
from dataclasses import replace

import pytest
import torch

from models.diffusion import (Denoiser, NoiseSchedule, predict_x0_eps, q_sample,
                              training_target)
from models.flow import FlowSchedule, flow_to_x0_eps, interpolate, velocity_target
from models.grids import DEFAULT_SPACING, spaced_timesteps
from models.guidance import autoguidance, classifier_free_guidance
from models.samplers import sample

MU, STD = 0.4, 0.5
X_T = torch.linspace(-3, 3, 61, dtype=torch.float64)  # deterministic starting points


def vp_oracle(schedule: NoiseSchedule) -> Denoiser:
    """E[eps | x_t] for Gaussian data, as an epsilon-prediction network."""
    def net(x, t, labels):
        a = schedule.alphas_cumprod[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    return Denoiser(net, schedule, "epsilon")


def flow_oracle(schedule: FlowSchedule) -> Denoiser:
    """E[eps - x0 | x_t] for Gaussian data on the path x_t = (1 - t) x0 + t eps."""
    def net(x, net_time, labels):
        t = (net_time.to(x.dtype) / schedule.timesteps).view(-1, *[1] * (x.dim() - 1))
        var = (1 - t) ** 2 * STD ** 2 + t ** 2
        x0 = MU + (1 - t) * STD ** 2 / var * (x - (1 - t) * MU)
        eps = t / var * (x - (1 - t) * MU)
        return eps - x0
    return Denoiser(net, schedule, "flow")


def vp_exact(schedule: NoiseSchedule, x_T: torch.Tensor) -> torch.Tensor:
    a = schedule.alphas_cumprod[-1].item()
    return MU + (x_T / math.sqrt(a) - MU) * STD / math.sqrt(STD ** 2 + (1 - a) / a)


def errors(denoiser: Denoiser, exact: torch.Tensor, sampler: str, steps: list[int]):
    return [(sample(denoiser, X_T.clone(), sampler, n).x - exact).abs().max().item()
            for n in steps]


@pytest.mark.parametrize("sampler, order, steps", [("ddim", 1, [20, 40]), ("heun", 2, [20, 40]),
                                                   ("dpmpp2m", 2, [40, 80])])
def test_noise_schedule_samplers_converge_at_their_order(sampler, order, steps):
    schedule = NoiseSchedule("linear", 1000)
    coarse, fine = errors(vp_oracle(schedule), vp_exact(schedule, X_T), sampler, steps)
    assert fine < coarse
    assert coarse / fine == pytest.approx(2 ** order, rel=0.2)


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("dpmpp2m", 2)])
def test_flow_samplers_converge_to_the_exact_transport_at_their_order(sampler, order):
    coarse, fine = errors(flow_oracle(FlowSchedule(1000)), MU + STD * X_T, sampler, [20, 40])
    assert coarse / fine == pytest.approx(2 ** order, rel=0.2)
    # DPM-Solver++'s first two steps from t = 1 (lambda = -inf) are first order, and on a grid
    # uniform in t they are long in lambda: second order, with a larger constant than Heun's
    assert fine < {"euler": 0.06, "heun": 0.001, "dpmpp2m": 0.04}[sampler]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("sampler, steps", [("heun", 40), ("dpmpp2m", 80), ("dpmpp2m", 15)])
def test_fast_samplers_reach_the_odes_closed_form_moments(sampler, steps, kind):
    """x_T ~ N(0, 1): the exact ODE output is Gaussian with the moments below."""
    torch.manual_seed(0)
    n, schedule = 20000, NoiseSchedule(kind, 1000)
    a = schedule.alphas_cumprod[-1].item()
    shrink = STD / math.sqrt(STD ** 2 + (1 - a) / a)
    mean, std = MU * (1 - shrink), shrink / math.sqrt(a)
    x = sample(vp_oracle(schedule), torch.randn(n, dtype=torch.float64), sampler, steps).x
    assert abs(x.mean().item() - mean) < 4 * std / math.sqrt(n) + 0.005
    assert abs(x.std().item() - std) < 4 * std / math.sqrt(2 * n) + 0.015
    assert abs(std - STD) < 0.01  # which is (nearly) the data distribution


def test_flow_interpolant_target_and_conversions():
    torch.manual_seed(0)
    flow = FlowSchedule(100)
    x0, eps = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    k = torch.tensor([0, 9, 49, 50, 98, 99])
    t = (k + 1).double() / 100
    x_t = q_sample(flow, x0, k, eps)
    assert torch.allclose(x_t, (1 - t[:, None]) * x0 + t[:, None] * eps, atol=1e-12)
    assert torch.allclose(interpolate(x0, t, eps), x_t, atol=1e-12)
    assert torch.equal(q_sample(flow, x0, 99, eps), eps)  # t = 1 is pure noise
    v = training_target(flow, x0, k, eps, "flow")
    assert torch.equal(v, velocity_target(x0, eps)) and torch.equal(v, eps - x0)
    x0_hat, eps_hat = predict_x0_eps(flow, v, k, x_t, "flow")
    assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)
    clipped, eps_c = flow_to_x0_eps(flow, v, k, x_t, clip_x0=True)
    assert clipped.abs().max() <= 1
    assert torch.allclose(interpolate(clipped, t, eps_c), x_t, atol=1e-12)  # still on the path


def test_logit_normal_training_times():
    torch.manual_seed(0)
    t = FlowSchedule(logit_mean=0.5, logit_std=1.5).sample_times(50000, "cpu")
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logit.std().item() == pytest.approx(1.5, rel=0.02)
    with pytest.raises(ValueError):
        FlowSchedule(logit_std=0)


def test_classifier_free_guidance_of_a_flow_model():
    flow = FlowSchedule(50)

    def net(x, t, labels):
        return 0.3 * x + labels.to(x.dtype)[:, None]
    x, t, y = torch.randn(3, 2, dtype=torch.float64), torch.tensor([3, 20, 49]), torch.tensor(
        [1, 2, 3])
    plain = Denoiser(net, flow, "flow")
    cond, uncond = plain(x, t, y), plain(x, t, torch.zeros_like(y))
    for got, c, u in zip(classifier_free_guidance(plain, 2.0, 0)(x, t, y), cond, uncond):
        assert torch.allclose(got, u + 2.0 * (c - u), atol=1e-12)


def test_autoguidance_extrapolates_from_the_guide_to_the_model():
    """Karras et al. 2024, eq. 2: D_w = D_guide + w (D - D_guide), for x0 and eps alike (both
    affine in the network output). The model is the exact velocity of the data N(MU, STD^2),
    the guide that of a wider N(MU, (2 STD)^2), as a weaker model's would be."""
    flow = FlowSchedule(50)
    model = flow_oracle(flow)

    def guide_net(x, net_time, labels):
        t = (net_time.to(x.dtype) / flow.timesteps).view(-1, *[1] * (x.dim() - 1))
        std = 2 * STD
        var = (1 - t) ** 2 * std ** 2 + t ** 2
        return t / var * (x - (1 - t) * MU) - (MU + (1 - t) * std ** 2 / var * (x - (1 - t) * MU))
    guide = Denoiser(guide_net, flow, "flow")
    x, t = X_T.clone(), torch.full((len(X_T),), 30)
    (x0_m, eps_m), (x0_g, eps_g) = model(x, t), guide(x, t)
    assert not torch.allclose(x0_m, x0_g)
    for w in (0.0, 1.0, 2.5):
        x0_w, eps_w = autoguidance(model, guide, w)(x, t)
        assert torch.allclose(x0_w, x0_g + w * (x0_m - x0_g), atol=1e-12)
        assert torch.allclose(eps_w, eps_g + w * (eps_m - eps_g), atol=1e-12)
    # weight 1 samples as the model does (to rounding); above 1 it moves away from the wider guide,
    # so the samples come out narrower than the model's
    plain = sample(model, X_T.clone(), "ddim", 20).x
    assert torch.allclose(sample(autoguidance(model, guide, 1.0), X_T.clone(), "ddim", 20).x, plain,
                          atol=1e-12)
    assert sample(autoguidance(model, guide, 2.0), X_T.clone(), "ddim", 20).x.std() < plain.std()


def _counting(denoiser: Denoiser, calls: list) -> Denoiser:
    def net(x, t, labels):
        calls.append(len(x))
        return denoiser.net(x, t, labels)
    return replace(denoiser, net=net)


def test_autoguidance_in_an_interval_guides_only_the_steps_whose_sigma_over_alpha_is_inside():
    """Kynkaanniemi et al. 2024: the guided output where lo < sigma / alpha <= hi, the model's
    own elsewhere, per sample, without evaluating the guide outside. On the flow path
    sigma / alpha = t / (1 - t), so (0.5, 2] is 1/3 < t <= 2/3."""
    flow = FlowSchedule(60)
    model = flow_oracle(flow)
    guide = Denoiser(lambda x, t, labels: 0.5 * model.net(x, t, labels), flow, "flow")
    calls = []
    limited = autoguidance(model, _counting(guide, calls), 2.0, interval=(0.5, 2.0))
    full = autoguidance(model, guide, 2.0)
    x = X_T.clone()
    for k in range(60):  # t_k = (k + 1) / 60
        t = torch.full((len(x),), k)
        expected = full(x, t) if 1 / 3 < (k + 1) / 60 <= 2 / 3 else model(x, t)
        got = limited(x, t)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), k
    assert len(calls) == 20  # k = 20..39: t in (1/3, 2/3]
    mixed = torch.tensor([5, 30] * (len(x) // 2) + [5] * (len(x) % 2))
    got = limited(x, mixed)[0]
    inside = mixed == 30
    assert torch.equal(got[inside], full(x, mixed)[0][inside])
    assert torch.equal(got[~inside], model(x, mixed)[0][~inside])
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        autoguidance(model, guide, 2.0, interval=(2.0, 0.5))


def test_the_guidance_interval_reads_sigma_over_alpha_from_a_noise_schedule():
    """On a noise schedule sigma / alpha = sqrt((1 - alpha_bar) / alpha_bar) at index t, and the
    network is told t itself."""
    schedule = NoiseSchedule("cosine", 200)
    model = vp_oracle(schedule)
    guide = Denoiser(lambda x, t, labels: 0.5 * model.net(x, t, labels), schedule, "epsilon")
    limited = autoguidance(model, guide, 3.0, interval=(0.5, 4.0))
    full = autoguidance(model, guide, 3.0)
    abar = schedule.alphas_cumprod
    ratio = ((1 - abar) / abar).sqrt()
    x = X_T.clone()
    assert 0 < int(((ratio > 0.5) & (ratio <= 4.0)).sum()) < 200
    for k in range(200):
        t = torch.full((len(x),), k)
        expected = full(x, t) if 0.5 < ratio[k] <= 4.0 else model(x, t)
        assert torch.equal(limited(x, t)[0], expected[0]), k


def test_ddpm_needs_a_noise_schedule_and_refuses_the_flow_path():
    with pytest.raises(ValueError, match="flow models use ddim"):
        sample(flow_oracle(FlowSchedule(50)), X_T.clone(), "ddpm", 5)


def test_heun_and_dpmpp_denoise_from_an_intermediate_t_and_keep_snapshots():
    schedule = NoiseSchedule("cosine", 1000)
    x0 = torch.full((4,), 0.4, dtype=torch.float64)
    x_t = q_sample(schedule, x0, 50, torch.zeros(4, dtype=torch.float64))
    for name in ("heun", "dpmpp2m"):
        out = sample(vp_oracle(schedule), x_t, name, 10, start_t=50, snapshots=3)
        assert len(out.frames) == 3 and out.frames[0][0] == 50
        assert torch.allclose(out.x, x0, atol=0.01)  # the mean image stays where it is


@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "karras"])
@pytest.mark.parametrize("schedule", [NoiseSchedule("cosine", 1000), NoiseSchedule("linear", 1000),
                                      FlowSchedule(1000)])
def test_spacings_visit_distinct_descending_grid_indices(schedule, spacing):
    for steps, start in [(10, None), (20, 600), (3, None), (1, 999)]:
        ts = spaced_timesteps(schedule, steps, start, spacing)
        first = 999 if start is None else start
        assert ts[0] == first and ts[-1] == (0 if steps > 1 else first)
        assert ts == sorted(set(ts), reverse=True) and len(ts) <= steps
    lam = schedule.log_snr().double()
    ts = spaced_timesteps(schedule, 20, 600, spacing)
    gaps = lam[ts[1:]] - lam[ts[:-1]]  # lambda rises towards the clean end
    assert (gaps > 0).all()
    if spacing == "logsnr":  # evenly spaced in lambda, up to snapping to the grid
        assert gaps[1:-1].std() < 0.15 * gaps[1:-1].mean()
    if spacing == "karras":  # (sigma / alpha)^(1/7) evenly spaced
        root = torch.exp(-lam[ts] / 2) ** (1 / 7)
        steps_in_root = root[:-1] - root[1:]
        assert steps_in_root[1:-1].std() < 0.2 * steps_in_root[1:-1].mean()
    with pytest.raises(ValueError, match="spacing"):
        spaced_timesteps(schedule, 10, None, "sqrt")


def test_default_spacings_beat_the_uniform_grid_on_the_cosine_schedule():
    """The reason for DEFAULT_SPACING: at 10 steps on the cosine schedule (sigma / alpha ends in
    the thousands) the log-SNR grid cuts the error of Heun and DPM-Solver++(2M) many times."""
    schedule = NoiseSchedule("cosine", 1000)
    denoiser, exact = vp_oracle(schedule), vp_exact(schedule, X_T)
    for sampler in ("heun", "dpmpp2m"):
        assert DEFAULT_SPACING[(sampler, "cosine")] == "logsnr"
        tuned = (sample(denoiser, X_T.clone(), sampler, 10).x - exact).abs().max()
        uniform = (sample(denoiser, X_T.clone(), sampler, 10, spacing="uniform").x
                   - exact).abs().max()
        assert tuned < uniform / 5
    ddim = (sample(denoiser, X_T.clone(), "ddim", 50).x - exact).abs().max()
    assert (sample(denoiser, X_T.clone(), "dpmpp2m", 10).x - exact).abs().max() < ddim / 2


def test_sampler_spacing_benchmark_smoke(tmp_path):
    """It publishes both tables for docs/ with the command that reproduces them."""
    import json
    from benchmarks import sampler_spacing
    argv = ["--STEPS=(4,)", "--SD_STEPS=(4, 8)", f"--RESULTS={tmp_path}"]
    rows = sampler_spacing.main(argv)
    for name, count in (("sampler_spacing", (2 * 3 + 2) * 3), ("sd_spacing", 2 * 4)):
        page, data = (tmp_path / f"{name}.md").read_text(), json.loads(
            (tmp_path / f"{name}.json").read_text())
        assert data["command"] == "python -m benchmarks.sampler_spacing " + " ".join(
            f"'{a}'" if " " in a or "(" in a else a for a in argv)
        assert f"`{data['command']}`" in page and data["date"] in page
        assert len(data["rows"]) == count and page.count("\n| ") == count + 1
    ours = [r for r in rows if r["schedule"] != "scaled_linear"]
    sd = [r for r in rows if r["schedule"] == "scaled_linear"]
    assert len(ours) == (2 * 3 + 2) * 3 and all(r["errors"][0] >= 0 for r in rows)
    assert len(sd) == 2 * 4 and all(len(r["errors"]) == 2 for r in sd)
    # more steps, less error, on every SD grid
    assert all(r["errors"][1] < r["errors"][0] for r in sd)
    # the leading grid starts below T - 1 (T / steps + 1 below at 30 DDIM steps: 958)
    assert {r["spacing"]: r["first_t"] for r in sd if r["sampler"] == "ddim"}["leading"] == 958


def test_samplers_follow_a_given_grid_and_ddim_can_land_on_alpha_bar_0():
    """timesteps= replaces the spacing (the grid models.grids builds for SD); a repeated entry
    is visited once; a grid that does not descend is refused; DDIM's last_t=0 lands on
    alpha_bar[0] (v1.5's set_alpha_to_one False): x = sqrt(a0) x0 + sqrt(1 - a0) eps of the
    last evaluation."""
    from models.diffusion import Denoiser, NoiseSchedule
    schedule = NoiseSchedule("scaled_linear", 1000)
    seen = []

    def net(x, t, labels):
        seen.append(int(t.reshape(-1)[0]))
        return 0.5 * x
    denoiser = Denoiser(net, schedule, "epsilon")
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = spaced_timesteps(schedule, 7, spacing="logsnr")
    for name in ("ddim", "heun", "dpmpp2m", "ddpm"):
        by_spacing = None if name == "ddpm" else sample(denoiser, x.clone(), name, 7,
                                                       spacing="logsnr").x
        seen.clear()
        given = sample(denoiser, x.clone(), name, len(grid), timesteps=grid).x
        assert seen[0] == grid[0] and set(seen) <= set(grid), name
        if by_spacing is not None:
            assert torch.equal(given, by_spacing), name
    seen.clear()
    sample(denoiser, x.clone(), "dpmpp2m", 4, timesteps=[900, 500, 1, 1])
    assert seen == [900, 500, 1]
    with pytest.raises(ValueError, match="descend"):
        sample(denoiser, x.clone(), "ddim", 2, timesteps=[10, 500])
    a0, a = schedule.alphas_cumprod[0], schedule.alphas_cumprod[300]
    out = sample(denoiser, x.clone(), "ddim", 1, timesteps=[300], last_t=0).x
    eps = 0.5 * x
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    assert torch.allclose(out, a0.sqrt() * x0 + (1 - a0).sqrt() * eps, atol=1e-12)
    assert torch.allclose(sample(denoiser, x.clone(), "ddim", 1, timesteps=[300]).x, x0,
                          atol=1e-12)  # the default lands on x0


@pytest.mark.parametrize("name, kind", [("ddim", "cosine"), ("heun", "cosine"),
                                        ("dpmpp2m", "cosine"), ("ddpm", "cosine"),
                                        ("ddim", "flow"), ("heun", "flow")])
def test_the_callback_sees_every_grid_step_with_the_state_and_prediction_it_used(name, kind):
    """The per-step callback (k-diffusion's interface): once per grid step, in order, with the
    x_t the denoiser was called at and its x0; the snapshots are a subset of what it saw, and
    watching changes nothing."""
    schedule = FlowSchedule(1000) if kind == "flow" else NoiseSchedule(kind, 1000)
    oracle = flow_oracle(schedule) if kind == "flow" else vp_oracle(schedule)
    calls = []

    def called_at(x, t, labels):
        calls.append(x.clone())
        return oracle.net(x, t, labels)
    denoiser, seen = replace(oracle, net=called_at), []
    rng = torch.Generator().manual_seed(0)
    out = sample(denoiser, X_T.clone(), name, 8, snapshots=3, generator=rng,
                 callback=lambda info: seen.append({**info, "x_t": info["x_t"].clone()}))
    grid = [info["t"] for info in seen]
    assert [info["i"] for info in seen] == list(range(len(grid))) and grid == sorted(grid)[::-1]
    assert all(info["steps"] == len(grid) for info in seen) and len(grid) >= 7
    first_calls = calls if name != "heun" else calls[::2]  # Heun's second call is its corrector
    for info, x_called in zip(seen, first_calls):
        assert torch.equal(info["x_t"], x_called)
        assert torch.equal(info["x0"], oracle(info["x_t"], info["t"], None)[0])
    frames = {t: x0 for t, _, x0 in out.frames}
    assert len(frames) == 3 and all(torch.equal(frames[i["t"]], i["x0"]) for i in seen
                                    if i["t"] in frames)
    plain = sample(oracle, X_T.clone(), name, 8, generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(out.x, plain)
