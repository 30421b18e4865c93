"""Timestep grids for Stable Diffusion, built as diffusers' schedulers build them from SD v1.5's
scheduler config, so that the same prompt, seed, sampler and steps visit the same timesteps.

    leading   (v1.5's config, steps_offset 1) DDIM, DDPM, Euler, Heun: 0, r, 2r, ... reversed,
              r = T // steps, plus the offset (4 steps: 751, 501, 251, 1); DPM-Solver's
              multistep scheduler: steps + 1 points of r = T // (steps + 1), the lowest dropped
              (801, 601, 401, 201). It never starts at t = T - 1.
    trailing  T, T - T/steps, ... rounded, minus 1 (999, 749, 499, 249): starts at pure noise
              (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    linspace  linspace(0, T - 1, steps) reversed (999, 666, 333, 0); DPM-Solver: steps + 1
              points, the lowest dropped (999, 749, 500, 250).
    karras    sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (Karras et
              al. 2022, eq. 5, rho 7) between the schedule's extreme sigma = sqrt((1 - a)/a),
              each mapped to a timestep by interpolating log sigma, then rounded ("DPM++ 2M
              Karras"). The samplers step between the rounded timesteps' own sigmas, where
              diffusers keeps the unrounded ones, and visit a timestep that rounding repeated
              (near t = 0 at 50 steps) once.

The grid is the list of timesteps a sampler evaluates the network at, descending; the step
after the last lands on the clean end (DDIM with set_alpha_to_one False, v1.5's: on
alpha_bar[0]; see models.samplers.ddim_sample's last_t).

The grids of the project's own samplers (any schedule, any start t) are here too:
timestep_subset (uniform), spaced_timesteps (uniform, logsnr or karras in sigma / alpha) and
checked_grid (a caller's own grid).
"""
import math

import numpy as np
import torch

SD_SPACINGS = ("leading", "trailing", "linspace", "karras")
# The default of StableDiffusion.py and the pipeline: the smallest error against the exact ODE
# solution of Gaussian data on SD's schedule, for DDIM and DPM-Solver++(2M), at 10 to 50 steps
# (benchmarks/sampler_spacing.py; docs/results.md). leading reproduces diffusers' v1.5 images.
SD_DEFAULT_SPACING = "karras"
STEPS_OFFSET = 1  # SD v1.5's scheduler_config.json: steps_offset
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5 (SD's karras grid and spaced_timesteps' karras)
MULTISTEP = ("dpmpp2m",)  # samplers that diffusers runs with DPMSolverMultistepScheduler


def sd_timesteps(alphas_cumprod: torch.Tensor, steps: int, spacing: str, sampler: str,
                 offset: int = STEPS_OFFSET) -> list[int]:
    """The descending timesteps `sampler` visits in `steps` steps under `spacing` (see above)."""
    if spacing not in SD_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SD_SPACINGS)}, got {spacing!r}")
    T, multistep = len(alphas_cumprod), sampler in MULTISTEP
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if spacing == "leading":
        if multistep:
            ratio = T // (steps + 1)
            ts = [k * ratio for k in range(steps + 1)][::-1][:-1]
        else:
            ratio = T // steps
            ts = [k * ratio for k in range(steps)][::-1]
        ts = [t + offset for t in ts]
    elif spacing == "trailing":  # numpy's float arithmetic, so that halves round alike
        ts = (np.round(np.arange(T, 0, -T / steps)) - 1).astype(np.int64).tolist()
    elif spacing == "linspace":
        points = np.linspace(0, T - 1, steps + 1 if multistep else steps).round()
        points = points.astype(np.int64).tolist()[::-1]
        ts = points[:-1] if multistep else points
    else:
        ts = _karras_timesteps(alphas_cumprod, steps)
    if any(not 0 <= t < T for t in ts):
        raise ValueError(f"{spacing} spacing at {steps} steps leaves the grid [0, {T - 1}]")
    return ts


def _karras_timesteps(alphas_cumprod: torch.Tensor, steps: int) -> list[int]:
    a = alphas_cumprod.double()
    log_sigmas = (((1 - a) / a).sqrt()).log()  # ascending in t
    lo, hi = log_sigmas[0].exp().item(), log_sigmas[-1].exp().item()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (hi ** (1 / KARRAS_RHO) + ramp * (lo ** (1 / KARRAS_RHO) - hi ** (1 / KARRAS_RHO))
              ) ** KARRAS_RHO
    out = []
    for sigma in sigmas.tolist():
        log_sigma = math.log(sigma)
        low = int((log_sigma - log_sigmas >= 0).long().cumsum(0).argmax().clamp(max=len(a) - 2))
        w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])
        w = float(w.clamp(0, 1))
        out.append(round((1 - w) * low + w * (low + 1)))
    return out


def timestep_subset(timesteps: int, steps: int, start_t: int | None = None) -> list[int]:
    """`steps` distinct timesteps, descending from start_t (default T-1) to 0, all in range."""
    start = timesteps - 1 if start_t is None else int(start_t)
    if not 0 <= start < timesteps:
        raise ValueError(f"start_t must be in [0, {timesteps - 1}], got {start}")
    steps = max(1, min(int(steps), start + 1))
    chosen = torch.linspace(start, 0, steps, dtype=torch.float64).round().long()
    return sorted(set(chosen.tolist()), reverse=True)


SPACINGS = ("uniform", "logsnr", "karras")  # how a deterministic sampler's steps are spread


# The spacing a sampler uses unless told, per (sampler, schedule kind): the one with the smallest
# error against the exact ODE solution of Gaussian data at 10-20 steps (tests/test_samplers.py's
# oracle; numbers in docs/results.md). Anything not listed: uniform.
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


def checked_grid(timesteps: list[int] | None, schedule, steps: int, start_t: int | None,
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
