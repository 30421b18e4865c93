"""Samplers: functions of a Denoiser (models/diffusion.py), so they can be driven by an exact
denoiser in tests. Any number of steps, any start t (to denoise a noised real image) or a given
grid of timesteps (`timesteps=`, e.g. models.grids' for Stable Diffusion), optional snapshots of
x_t and the predicted x0 (for reverse-diffusion strips), classifier-free guidance and
autoguidance.

    ddpm     ancestral sampling (noise schedules only)
    ddim     deterministic first-order steps x' = alpha' x0 + sigma' eps (eta > 0: stochastic);
             the same step is Euler's method in sigma space, and on the flow path Euler in t
    euler    the name of that step for flow models (identical to ddim)
    heun     Heun's second-order method on the probability-flow ODE (Karras et al. 2022,
             algorithm 1): in sigma space for noise schedules, in t for the flow path
    dpmpp2m  DPM-Solver++(2M) (Lu et al. 2022, algorithm 2), second-order multistep in
             log-SNR, noise schedules only

Every sampler returns a `Sampled`: the samples and the snapshots (empty unless asked for).
"""
import math
from dataclasses import replace
from typing import Callable, NamedTuple

import torch

from models.diffusion import Denoiser, ddim_step, ddpm_step


class Sampled(NamedTuple):
    """What a sampler returns: the samples x, and (t, x_t, predicted x0) at the snapshot steps."""
    x: torch.Tensor
    frames: list[tuple[int, torch.Tensor, torch.Tensor]]


def timestep_subset(timesteps: int, steps: int, start_t: int | None = None) -> list[int]:
    """`steps` distinct timesteps, descending from start_t (default T-1) to 0, all in range."""
    start = timesteps - 1 if start_t is None else int(start_t)
    if not 0 <= start < timesteps:
        raise ValueError(f"start_t must be in [0, {timesteps - 1}], got {start}")
    steps = max(1, min(int(steps), start + 1))
    chosen = torch.linspace(start, 0, steps, dtype=torch.float64).round().long()
    return sorted(set(chosen.tolist()), reverse=True)


SPACINGS = ("uniform", "logsnr", "karras")  # how a deterministic sampler's steps are spread
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho)
#                   - s_max^(1/rho)))^rho, with sigma = sigma / alpha here (the ODE's time)


# The spacing a sampler uses unless told, per (sampler, schedule kind): the one with the smallest
# error against the exact ODE solution of Gaussian data at 10-20 steps (tests/test_samplers.py's
# oracle; numbers in the README). Anything not listed: uniform.
DEFAULT_SPACING = {("heun", "cosine"): "logsnr", ("dpmpp2m", "cosine"): "logsnr",
                   ("dpmpp2m", "linear"): "logsnr"}


def spaced_timesteps(schedule, steps: int, start_t: int | None = None,
                     spacing: str = "uniform") -> list[int]:
    """The grid indices a deterministic sampler visits, descending from start_t to 0.

    uniform: evenly spaced indices (timestep_subset). logsnr: evenly spaced in
    lambda = log(alpha^2 / sigma^2) (Lu et al. 2022 use this spacing for DPM-Solver). karras:
    evenly spaced in (sigma / alpha)^(1 / KARRAS_RHO), dense at low noise. Each target is
    snapped to the nearest index (the network was trained on the grid), so a near-duplicate
    target may drop a step.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    ts = timestep_subset(schedule.timesteps, steps, start_t)
    if spacing == "uniform" or len(ts) < 3:
        return ts
    start = ts[0]
    lam = schedule.log_snr()[:start + 1].double()  # decreasing in t; -inf where sigma / alpha
    finite = lam[torch.isfinite(lam)]              # is infinite (the flow path's noise end)
    lam_hi, lam_lo = finite.max(), finite.min()
    fractions = torch.linspace(0, 1, len(ts), dtype=torch.float64)[1:-1]
    if spacing == "logsnr":
        targets = lam_lo + fractions * (lam_hi - lam_lo)
    else:  # sigma / alpha = exp(-lambda / 2)
        lo, hi = (torch.exp(-x / 2) ** (1 / KARRAS_RHO) for x in (lam_hi, lam_lo))
        targets = -2 * KARRAS_RHO * torch.log(hi + fractions * (lo - hi))
    nearest = (lam[None, :] - targets[:, None]).abs().nan_to_num(float("inf")).argmin(1)
    return sorted({start, 0, *nearest.tolist()}, reverse=True)


def _grid(timesteps: list[int] | None, schedule, steps: int, start_t: int | None,
          spacing: str) -> list[int]:
    """The visited steps: `timesteps` as given (a caller's grid, e.g. models.grids'; a repeated
    entry, which a rounded Karras grid can hold, is a step of length 0 and visited once),
    checked to descend within the schedule, or else spaced_timesteps."""
    if timesteps is None:
        return spaced_timesteps(schedule, steps, start_t, spacing)
    ts = list(dict.fromkeys(int(t) for t in timesteps))
    if not ts or any(not 0 <= t < schedule.timesteps for t in ts) \
            or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must descend within [0, {schedule.timesteps - 1}], "
                         f"got {ts}")
    return ts


def classifier_free_guidance(denoiser: Denoiser, scale: float, null_label: int) -> Denoiser:
    """The denoiser whose network output is out_u + scale * (out_c - out_u) (Ho & Salimans 2022),
    both from one batched forward pass. Scale 0 is unconditional, scale 1 conditional.

    x0 and eps are affine in the network output, so without clipping this is the same
    combination of the conditional and unconditional x0 and eps.
    """
    net = denoiser.net

    def guided(x, t, labels):
        null = torch.full_like(labels, null_label)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        out_c, out_u = out.chunk(2)
        return out_u + scale * (out_c - out_u)
    return replace(denoiser, net=guided)


def autoguidance(denoiser: Denoiser, guide: Denoiser, weight: float,
                 interval: tuple[float, float] | None = None) -> Denoiser:
    """The denoiser whose network output is out_g + weight * (out - out_g), where out_g is the
    output of `guide`, a weaker version of the same model (Karras et al. 2024, "Guiding a
    diffusion model with a bad version of itself", eq. 2). Weight 1 is the model itself, 0 the
    guide. Both must share the schedule and prediction type, so that (as for classifier-free
    guidance) the combination of outputs is the same combination of x0 and eps (or velocity).

    interval=(lo, hi) guides only the steps whose noise-to-signal ratio sigma / alpha lies in
    (lo, hi] and uses the model alone elsewhere (guidance in a limited interval, Kynkaanniemi
    et al. 2024); the guide is then not evaluated outside it (which costs one host sync per step
    on a GPU: sampling only).
    """
    net, guide_net = denoiser.net, guide.net
    inside_at = None if interval is None else _inside_interval(denoiser.schedule, *interval)

    def guided(x, t, labels):
        out = net(x, t, labels)
        inside = None if inside_at is None else inside_at(t)
        if inside is not None and not bool(inside.any()):
            return out  # no sample is in the interval: the guide is not evaluated
        out_g = guide_net(x, t, labels)
        mixed = out_g + weight * (out - out_g)
        if inside is None:
            return mixed
        return torch.where(inside.view(-1, *[1] * (out.dim() - 1)), mixed, out)
    return replace(denoiser, net=guided)


def check_interval(interval) -> None:
    """ValueError unless `interval` is a guidance interval (lo, hi) of numbers, 0 <= lo < hi."""
    if not (isinstance(interval, (tuple, list)) and len(interval) == 2
            and all(isinstance(v, (int, float)) for v in interval)
            and 0 <= interval[0] < interval[1]):
        raise ValueError(f"a guidance interval needs (lo, hi) with 0 <= lo < hi, got {interval!r}")


def _inside_interval(schedule, lo: float, hi: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function of the times a network is told (schedule.net_time of the grid indices) that
    says, per sample, whether that step's sigma / alpha = exp(-log_snr / 2) lies in (lo, hi]."""
    check_interval((lo, hi))
    net_times = schedule.net_time(torch.arange(schedule.timesteps)).double()  # ascending
    ratio = torch.exp(-0.5 * schedule.log_snr().double())  # inf at the flow path's noise end
    inside = (ratio > lo) & (ratio <= hi)

    def inside_at(t: torch.Tensor) -> torch.Tensor:
        k = torch.searchsorted(net_times.to(t.device), t.double().reshape(-1))
        return inside.to(t.device)[k.clamp_max(len(inside) - 1)]
    return inside_at


def _snapshot_steps(ts: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = torch.linspace(0, len(ts) - 1, min(count, len(ts))).round().long().tolist()
    return {ts[i] for i in picks}


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _flow(denoiser: Denoiser) -> bool:
    return denoiser.schedule.kind == "flow"


def _require_noise_schedule(denoiser: Denoiser, name: str) -> None:
    if _flow(denoiser):
        raise ValueError(f"the {name} sampler needs a noise schedule; flow models use ddim "
                         f"(Euler) or heun")


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int | None = None,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None,
                timesteps: list[int] | None = None) -> Sampled:
    """Ancestral sampling over all T steps or an evenly strided subset of them (or the given
    `timesteps`), on the respaced schedule that keeps alpha_bar at the visited steps (Nichol &
    Dhariwal 2021, section 4)."""
    _require_noise_schedule(denoiser, "ddpm")
    schedule = denoiser.schedule
    ts = _grid(timesteps, schedule, steps or schedule.timesteps, start_t, "uniform")
    respaced = schedule.respace(torch.tensor(ts[::-1]))  # index k <-> original step ts[-1-k]
    record, frames = _snapshot_steps(ts, snapshots), []
    for i, t in enumerate(ts):
        k = len(ts) - 1 - i
        x0, _ = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
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
                timesteps: list[int] | None = None, last_t: int = -1) -> Sampled:
    """DDIM (Song et al. 2021) with any number of steps and eta; the last step lands on x0
    (last_t -1), or on grid index last_t (0: SD's set_alpha_to_one=False, alpha_bar[0]). On the
    flow path (eta 0) it is Euler's method in t. `spacing`: see spaced_timesteps; `timesteps`:
    a grid to visit instead."""
    if eta > 0 and _flow(denoiser):
        raise ValueError("flow models sample deterministically (eta must be 0)")
    ts = _grid(timesteps, denoiser.schedule, steps, start_t, spacing)
    record, frames = _snapshot_steps(ts, snapshots), []
    for t, t_prev in zip(ts, ts[1:] + [last_t]):
        x0, eps = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
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
                timesteps: list[int] | None = None) -> Sampled:
    """Heun's method (Karras et al. 2022, algorithm 1) on the probability-flow ODE, `steps`
    intervals (2 * steps - 1 network evaluations) spread by `spacing` (spaced_timesteps;
    None: DEFAULT_SPACING), or over the given `timesteps`.

    Noise schedules: state y = x / alpha, time tau = sigma / alpha, dy/dtau = eps. Flow path:
    y = x, tau = t, dy/dtau = eps - x0. The last interval, to the clean end, is an Euler step.
    """
    ts = _grid(timesteps, denoiser.schedule, steps, start_t,
               spacing or DEFAULT_SPACING.get(("heun", denoiser.schedule.kind), "uniform"))
    record, frames = _snapshot_steps(ts, snapshots), []
    flow = _flow(denoiser)

    def ode(t: int) -> tuple[float, float]:  # (scale y -> x, tau) at grid index t
        alpha, sigma = _coefficients(denoiser, t)
        return (1.0, sigma) if flow else (alpha, sigma / alpha)

    def slope(x0, eps):
        return eps - x0 if flow else eps

    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0, eps = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
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
                    timesteps: list[int] | None = None) -> Sampled:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): with lambda = log(alpha / sigma) and
    h_i = lambda_i - lambda_{i-1},
        x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - x0_{i-2} / (2 r_i),  r_i = h_{i-1} / h_i;
    the first step (D = x0, which is DDIM) and the last (to sigma = 0, x = x0) are first order.
    `spacing`: see spaced_timesteps (None: DEFAULT_SPACING); `timesteps`: a grid to visit."""
    _require_noise_schedule(denoiser, "dpmpp2m")
    ts = _grid(timesteps, denoiser.schedule, steps, start_t,
               spacing or DEFAULT_SPACING.get(("dpmpp2m", denoiser.schedule.kind), "uniform"))
    record, frames = _snapshot_steps(ts, snapshots), []
    x0_before, h_before = None, None
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0, _ = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
        if t_prev < 0:
            x_t = x0
            break
        (alpha, sigma), (alpha_n, sigma_n) = _coefficients(denoiser, t), _coefficients(denoiser,
                                                                                       t_prev)
        h = math.log(alpha_n / sigma_n) - math.log(alpha / sigma)
        d = x0
        if x0_before is not None:
            r = h_before / h
            d = (1 + 1 / (2 * r)) * x0 - x0_before / (2 * r)
        x_t = (sigma_n / sigma) * x_t - alpha_n * math.expm1(-h) * d
        x0_before, h_before = x0, h
    return Sampled(x_t, frames)


SAMPLERS: dict[str, Callable[..., Sampled]] = {
    "ddpm": ddpm_sample, "ddim": ddim_sample, "euler": ddim_sample, "heun": heun_sample,
    "dpmpp2m": dpmpp_2m_sample}
FLOW_SAMPLERS = ("ddim", "euler", "heun")  # the ones defined on the flow path


def sample(denoiser: Denoiser, x_t: torch.Tensor, sampler: str = "ddim", steps: int = 50,
           eta: float = 0.0, **kwargs) -> Sampled:
    """Run the sampler named `sampler` from x_t for `steps` steps."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "ddim":
        kwargs["eta"] = eta
    return SAMPLERS[sampler](denoiser, x_t, steps=steps, **kwargs)
