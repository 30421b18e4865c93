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
"""
import math

import numpy as np
import torch

SD_SPACINGS = ("leading", "trailing", "linspace", "karras")
# The default of StableDiffusion.py and the pipeline: the smallest error against the exact ODE
# solution of Gaussian data on SD's schedule, for DDIM and DPM-Solver++(2M), at 10 to 50 steps
# (benchmarks/sampler_spacing.py; README). leading reproduces diffusers' v1.5 images.
DEFAULT_SPACING = "karras"
STEPS_OFFSET = 1  # SD v1.5's scheduler_config.json: steps_offset
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5
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
