"""Samplers: functions of a Denoiser (models/diffusion.py), so they can be driven by an exact
denoiser in tests. Any number of steps, any start t (to denoise a noised real image), optional
snapshots of x_t and the predicted x0 (for reverse-diffusion strips), classifier-free guidance.

Every sampler returns a `Sampled`: the samples and the snapshots (empty unless asked for).
"""
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


def _snapshot_steps(ts: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = torch.linspace(0, len(ts) - 1, min(count, len(ts))).round().long().tolist()
    return {ts[i] for i in picks}


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int | None = None,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None) -> Sampled:
    """Ancestral sampling over all T steps or an evenly strided subset of them, on the respaced
    schedule that keeps alpha_bar at the visited steps (Nichol & Dhariwal 2021, section 4)."""
    schedule = denoiser.schedule
    ts = timestep_subset(schedule.timesteps, steps or schedule.timesteps, start_t)
    respaced = schedule.respace(torch.tensor(ts[::-1]))  # index k <-> original step ts[-1-k]
    record, frames = _snapshot_steps(ts, snapshots), []
    for i, t in enumerate(ts):
        k = len(ts) - 1 - i
        x0, _ = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
        x_t = ddpm_step(respaced, x0, k, x_t, noise=_noise(x_t, generator) if k > 0 else None)
    return Sampled(x_t, frames)


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, x_t: torch.Tensor, *, steps: int = 50, eta: float = 0.0,
                start_t: int | None = None, labels=None, snapshots: int = 0,
                generator: torch.Generator | None = None) -> Sampled:
    """DDIM (Song et al. 2021) with any number of steps and eta; the last step lands on x0."""
    ts = timestep_subset(denoiser.schedule.timesteps, steps, start_t)
    record, frames = _snapshot_steps(ts, snapshots), []
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x0, eps = denoiser(x_t, t, labels)
        if t in record:
            frames.append((t, x_t.clone(), x0))
        noise = _noise(x_t, generator) if eta > 0 and t_prev >= 0 else None
        x_t = ddim_step(denoiser.schedule, x0, eps, t, t_prev, x_t, eta, noise)
    return Sampled(x_t, frames)


SAMPLERS: dict[str, Callable[..., Sampled]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sample(denoiser: Denoiser, x_t: torch.Tensor, sampler: str = "ddim", steps: int = 50,
           eta: float = 0.0, **kwargs) -> Sampled:
    """Run the sampler named `sampler` (ddpm or ddim) from x_t for `steps` steps."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "ddim":
        kwargs["eta"] = eta
    return SAMPLERS[sampler](denoiser, x_t, steps=steps, **kwargs)
