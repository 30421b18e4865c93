"""Samplers built on ddpm_step / ddim_step. The denoiser is any callable model_fn(x_t, t, labels).

Any number of steps, any start t (to denoise a noised real image), optional snapshots of x_t and
the predicted x0 (for reverse-diffusion strips), optional x0 clipping, classifier-free guidance.
"""
from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def timestep_subset(timesteps: int, steps: int, start_t: int | None = None) -> list[int]:
    """`steps` distinct timesteps, descending from start_t (default T-1) to 0, all in range."""
    start = timesteps - 1 if start_t is None else int(start_t)
    if not 0 <= start < timesteps:
        raise ValueError(f"start_t must be in [0, {timesteps - 1}], got {start}")
    steps = max(1, min(int(steps), start + 1))
    chosen = torch.linspace(start, 0, steps, dtype=torch.float64).round().long()
    return sorted(set(chosen.tolist()), reverse=True)


def sample_timesteps(batch: int, timesteps: int, device,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1}."""
    return torch.randint(0, timesteps, (batch,), device=device, generator=generator)


def classifier_free_guidance(model_fn: ModelFn, scale: float, null_label: int) -> ModelFn:
    """out_u + scale * (out_c - out_u) (Ho & Salimans 2022), both from one batched forward pass.

    scale 0 gives the unconditional prediction, scale 1 the conditional one.
    """
    def guided(x, t, labels):
        null = torch.full_like(labels, null_label)
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        out_c, out_u = out.chunk(2)
        return out_u + scale * (out_c - out_u)
    return guided


def _snapshot_steps(ts: list[int], count: int) -> set[int]:
    if count <= 0:
        return set()
    picks = torch.linspace(0, len(ts) - 1, min(count, len(ts))).round().long().tolist()
    return {ts[i] for i in picks}


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, schedule, x_t: torch.Tensor, *, steps: int | None = None,
                start_t: int | None = None, labels=None, prediction_type: str = "epsilon",
                clip_x0: bool = False, snapshots: int = 0, generator=None):
    """Ancestral sampling over all T steps or an evenly strided subset (respaced schedule).

    Returns the samples, and with snapshots > 0 also a list of (t, x_t, predicted x0).
    """
    from models.diffusion import ddpm_step, predict_x0_eps
    ts = timestep_subset(schedule.timesteps, steps or schedule.timesteps, start_t)
    respaced = schedule.respace(torch.tensor(ts[::-1]))  # index k <-> original step ts[-1-k]
    record, frames = _snapshot_steps(ts, snapshots), []
    for i, t in enumerate(ts):
        k = len(ts) - 1 - i
        out = model_fn(x_t, torch.full((len(x_t),), t, device=x_t.device), labels).to(x_t.dtype)
        if t in record:
            x0, _ = predict_x0_eps(respaced, out, k, x_t, prediction_type, clip_x0)
            frames.append((t, x_t.clone(), x0))
        x_t = ddpm_step(respaced, out, k, x_t, prediction_type,
                        noise=_noise(x_t, generator) if k > 0 else None, clip_x0=clip_x0)
    return (x_t, frames) if snapshots else x_t


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, schedule, x_t: torch.Tensor, *, steps: int = 50,
                eta: float = 0.0, start_t: int | None = None, labels=None,
                prediction_type: str = "epsilon", clip_x0: bool = False, snapshots: int = 0,
                generator=None):
    """DDIM (Song et al. 2021) with any number of steps and eta; the last step lands on x0."""
    from models.diffusion import ddim_step, predict_x0_eps
    ts = timestep_subset(schedule.timesteps, steps, start_t)
    record, frames = _snapshot_steps(ts, snapshots), []
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        out = model_fn(x_t, torch.full((len(x_t),), t, device=x_t.device), labels).to(x_t.dtype)
        if t in record:
            x0, _ = predict_x0_eps(schedule, out, t, x_t, prediction_type, clip_x0)
            frames.append((t, x_t.clone(), x0))
        noise = _noise(x_t, generator) if eta > 0 and t_prev >= 0 else None
        x_t = ddim_step(schedule, out, t, t_prev, x_t, eta, prediction_type, noise, clip_x0)
    return (x_t, frames) if snapshots else x_t


def sample(model_fn: ModelFn, schedule, x_t: torch.Tensor, sampler: str = "ddim",
           steps: int = 50, eta: float = 0.0, **kwargs):
    """Dispatch to ddpm_sample or ddim_sample by name."""
    if sampler == "ddpm":
        return ddpm_sample(model_fn, schedule, x_t, steps=steps, **kwargs)
    if sampler == "ddim":
        return ddim_sample(model_fn, schedule, x_t, steps=steps, eta=eta, **kwargs)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
