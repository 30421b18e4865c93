"""Samplers: functions of a Denoiser (models/diffusion.py), so they can be driven by an exact
denoiser in tests, and guided by wrapping it (models/guidance.py). The time grid is built apart
from the update rule (models/grids.py): any number of steps spread by a spacing, any start t (to
denoise a noised real image), or a caller's own grid (`timesteps=`: Karras, log-SNR, SD's
leading/trailing, custom). Optional snapshots of x_t and the predicted x0 (reverse-diffusion
strips) and a per-step `callback` (progress bars, live previews), as k-diffusion's samplers
take one.

    ddpm     ancestral sampling (noise schedules only)
    ddim     deterministic first-order steps x' = alpha' x0 + sigma' eps (eta > 0: stochastic);
             the same step is Euler's method in sigma space, and on the flow path Euler in t
    euler    the name of that step for flow models (identical to ddim)
    heun     Heun's second-order method on the probability-flow ODE (Karras et al. 2022,
             algorithm 1): in sigma space for noise schedules, in t for the flow path
    dpmpp2m  DPM-Solver++(2M) (Lu et al. 2022, algorithm 2), second-order multistep in
             log-SNR; its update needs only x_t = alpha x0 + sigma eps, so it runs on the flow
             path too (alpha = 1 - t, sigma = t)

Every sampler returns a `Sampled`: the samples and the snapshots (empty unless asked for). The
callback gets, after each network evaluation of the grid, a dict {"i": step index, "t": grid
index, "steps": grid length, "x_t": the state it was evaluated at, "x0": the prediction}.
"""
import math
from typing import Callable, NamedTuple

import torch

from models.diffusion import Denoiser, ddim_step, ddpm_step
from models.grids import DEFAULT_SPACING, checked_grid


class Sampled(NamedTuple):
    """What a sampler returns: the samples x, and (t, x_t, predicted x0) at the snapshot steps."""
    x: torch.Tensor
    frames: list[tuple[int, torch.Tensor, torch.Tensor]]


def _snapshot_steps(ts: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = torch.linspace(0, len(ts) - 1, min(count, len(ts))).round().long().tolist()
    return {ts[i] for i in picks}


def _watch(ts: list[int], snapshots: int, callback: Callable[[dict], None] | None):
    """(frames, see): see(i, t, x_t, x0) keeps the snapshot frames and calls the callback."""
    record, frames = _snapshot_steps(ts, snapshots), []

    def see(i: int, t: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if t in record:
            frames.append((t, x_t.clone(), x0))
        if callback is not None:
            callback({"i": i, "t": t, "steps": len(ts), "x_t": x_t, "x0": x0})
    return frames, see


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _flow(denoiser: Denoiser) -> bool:
    return denoiser.schedule.kind == "flow"


def _require_noise_schedule(denoiser: Denoiser, name: str) -> None:
    if _flow(denoiser):
        raise ValueError(f"the {name} sampler needs a noise schedule; flow models use ddim "
                         f"(Euler), heun or dpmpp2m")


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int | None = None,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None,
                timesteps: list[int] | None = None,
                callback: Callable[[dict], None] | None = None) -> Sampled:
    """Ancestral sampling over all T steps or an evenly strided subset of them (or the given
    `timesteps`), on the respaced schedule that keeps alpha_bar at the visited steps (Nichol &
    Dhariwal 2021, section 4)."""
    _require_noise_schedule(denoiser, "ddpm")
    schedule = denoiser.schedule
    ts = checked_grid(timesteps, schedule, steps or schedule.timesteps, start_t, "uniform")
    respaced = schedule.respace(torch.tensor(ts[::-1]))  # index k <-> original step ts[-1-k]
    frames, see = _watch(ts, snapshots, callback)
    for i, t in enumerate(ts):
        k = len(ts) - 1 - i
        x0, _ = denoiser(x_t, t, labels)
        see(i, t, x_t, x0)
        x_t = ddpm_step(respaced, x0, k, x_t, noise=_noise(x_t, generator) if k > 0 else None)
    return Sampled(x_t, frames)


def _coefficients(denoiser: Denoiser, t: int) -> tuple[float, float]:
    """(alpha, sigma) at grid index t as floats; index -1 is the clean end (1, 0)."""
    if t < 0:
        return 1.0, 0.0
    one = torch.zeros((), dtype=torch.float64)
    alpha, sigma = denoiser.schedule.coefficients(t, one)
    return float(alpha), float(sigma)


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int = 50, eta: float = 0.0,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None, spacing: str = "uniform",
                timesteps: list[int] | None = None, last_t: int = -1,
                callback: Callable[[dict], None] | None = None) -> Sampled:
    """DDIM (Song et al. 2021) with any number of steps and eta; the last step lands on x0
    (last_t -1), or on grid index last_t (0: SD's set_alpha_to_one=False, alpha_bar[0]). On the
    flow path (eta 0) it is Euler's method in t. `spacing`: see spaced_timesteps; `timesteps`:
    a grid to visit instead."""
    if eta > 0 and _flow(denoiser):
        raise ValueError("flow models sample deterministically (eta must be 0)")
    ts = checked_grid(timesteps, denoiser.schedule, steps, start_t, spacing)
    frames, see = _watch(ts, snapshots, callback)
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [last_t])):
        x0, eps = denoiser(x_t, t, labels)
        see(i, t, x_t, x0)
        if _flow(denoiser):
            alpha, sigma = _coefficients(denoiser, t_prev)
            x_t = alpha * x0 + sigma * eps
        else:
            noise = _noise(x_t, generator) if eta > 0 and t_prev >= 0 else None
            x_t = ddim_step(denoiser.schedule, x0, eps, t, t_prev, x_t, eta, noise)
    return Sampled(x_t, frames)


@torch.no_grad()
def heun_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int = 20,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None, spacing: str | None = None,
                timesteps: list[int] | None = None,
                callback: Callable[[dict], None] | None = None) -> Sampled:
    """Heun's method (Karras et al. 2022, algorithm 1) on the probability-flow ODE, `steps`
    intervals (2 * steps - 1 network evaluations) spread by `spacing` (spaced_timesteps;
    None: DEFAULT_SPACING), or over the given `timesteps`.

    Noise schedules: state y = x / alpha, time tau = sigma / alpha, dy/dtau = eps. Flow path:
    y = x, tau = t, dy/dtau = eps - x0. The last interval, to the clean end, is an Euler step.
    """
    ts = checked_grid(timesteps, denoiser.schedule, steps, start_t,
               spacing or DEFAULT_SPACING.get(("heun", denoiser.schedule.kind), "uniform"))
    frames, see = _watch(ts, snapshots, callback)
    flow = _flow(denoiser)

    def ode(t: int) -> tuple[float, float]:  # (scale y -> x, tau) at grid index t
        alpha, sigma = _coefficients(denoiser, t)
        return (1.0, sigma) if flow else (alpha, sigma / alpha)

    def slope(x0, eps):
        return eps - x0 if flow else eps

    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        x0, eps = denoiser(x_t, t, labels)
        see(i, t, x_t, x0)
        (scale, tau), (scale_prev, tau_prev) = ode(t), ode(t_prev)
        y, d = x_t / scale, slope(x0, eps)
        y_prev = y + (tau_prev - tau) * d
        if t_prev >= 0:  # the trapezoidal correction with the slope at the Euler point
            x0_e, eps_e = denoiser(scale_prev * y_prev, t_prev, labels)
            y_prev = y + (tau_prev - tau) * 0.5 * (d + slope(x0_e, eps_e))
        x_t = scale_prev * y_prev
    return Sampled(x_t, frames)


@torch.no_grad()
def dpmpp_2m_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int = 20,
                    start_t: int | None = None, labels=None, snapshots: int = 0,
                    generator: torch.Generator | None = None, spacing: str | None = None,
                    timesteps: list[int] | None = None,
                    callback: Callable[[dict], None] | None = None) -> Sampled:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): with lambda = log(alpha / sigma) and
    h_i = lambda_i - lambda_{i-1},
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - x0_{i-2} / (2 r_i),  r_i = h_{i-1} / h_i;
    the first step (D = x0, which is DDIM) and the last (to sigma = 0, x = x0) are first order.
    A start at alpha = 0 (the flow path's t = 1) has lambda = -inf: that step is DDIM's
    (e^{-h} - 1 = -1), and the next one, with r = inf, first order too.
    `spacing`: see spaced_timesteps (None: DEFAULT_SPACING); `timesteps`: a grid to visit."""
    ts = checked_grid(timesteps, denoiser.schedule, steps, start_t,
               spacing or DEFAULT_SPACING.get(("dpmpp2m", denoiser.schedule.kind), "uniform"))
    frames, see = _watch(ts, snapshots, callback)
    x0_before, h_before = None, None
    for i, (t, t_prev) in enumerate(zip(ts, ts[1:] + [-1])):
        x0, _ = denoiser(x_t, t, labels)
        see(i, t, x_t, x0)
        if t_prev < 0:
            x_t = x0
            break
        (alpha, sigma), (alpha_n, sigma_n) = _coefficients(denoiser, t), _coefficients(denoiser,
                                                                                       t_prev)
        h = math.log(alpha_n / sigma_n) - (math.log(alpha / sigma) if alpha > 0 else -math.inf)
        d = x0
        if x0_before is not None and math.isfinite(h_before):
            r = h_before / h
            d = (1 + 1 / (2 * r)) * x0 - x0_before / (2 * r)
        x_t = (sigma_n / sigma) * x_t - alpha_n * math.expm1(-h) * d
        x0_before, h_before = x0, h
    return Sampled(x_t, frames)


SAMPLERS: dict[str, Callable[..., Sampled]] = {
    "ddpm": ddpm_sample, "ddim": ddim_sample, "euler": ddim_sample, "heun": heun_sample,
    "dpmpp2m": dpmpp_2m_sample}
FLOW_SAMPLERS = ("ddim", "euler", "heun", "dpmpp2m")  # the ones defined on the flow path


def sample(denoiser: Denoiser, x_t: torch.Tensor, sampler: str = "ddim", steps: int = 50,
           eta: float = 0.0, **kwargs) -> Sampled:
    """Run the sampler named `sampler` from x_t for `steps` steps."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "ddim":
        kwargs["eta"] = eta
    return SAMPLERS[sampler](denoiser, x_t, steps=steps, **kwargs)
