"""Diffusion training step (pixel DDPM and latent diffusion): loss on eps/x0/v, min-SNR weights,
label dropout for classifier-free guidance, AdamW with warm-up, gradient clipping, EMA.

The epoch loop and run scripts build on these (issue 4, in progress).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models.diffusion import (NoiseSchedule, min_snr_weight, q_sample, sample_timesteps,
                              training_target)
from utils.device import autocast

QUARTERS = 4  # the loss is also logged per quarter of the timestep range


@dataclass
class DiffusionSetup:
    """The built objects of a diffusion run."""
    model: torch.nn.Module
    ema: AveragedModel
    opt: torch.optim.Optimizer
    lr_sched: torch.optim.lr_scheduler.LambdaLR
    schedule: NoiseSchedule
    device: torch.device
    amp_dtype: torch.dtype | None = None
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    label_dropout: float = 0.0

    @property
    def modules(self) -> dict:
        return {"model": self.model, "ema": self.ema, "opt": self.opt, "lr_sched": self.lr_sched}


def warmup_lr(warmup_steps: int, total_steps: int, kind: str = "constant"):
    """LR multiplier: linear warm-up, then constant or cosine decay to 0 at total_steps."""
    if kind not in ("constant", "cosine"):
        raise ValueError(f"LR schedule must be 'constant' or 'cosine', got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def build_diffusion(model: torch.nn.Module, schedule: NoiseSchedule, device: torch.device, *,
                    lr: float, warmup_steps: int, total_steps: int, lr_schedule: str = "constant",
                    ema_decay: float = 0.999, weight_decay: float = 0.0, **options
                    ) -> DiffusionSetup:
    """AdamW, warm-up LR schedule and an EMA copy of the weights around a denoiser."""
    model = model.to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lr(warmup_steps, total_steps,
                                                             lr_schedule))
    return DiffusionSetup(model, ema, opt, sched, schedule, device, **options)


def drop_labels(labels: torch.Tensor, rate: float, null_class: int) -> torch.Tensor:
    """Replace each label by the null class with probability `rate` (CFG training)."""
    if rate <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def diffusion_loss(s: DiffusionSetup, x0: torch.Tensor, labels: torch.Tensor | None = None):
    """Per-sample weighted MSE to the target at random t; returns (loss, per-sample, t)."""
    t = sample_timesteps(len(x0), s.schedule.timesteps, x0.device)
    eps = torch.randn_like(x0)
    x_t = q_sample(s.schedule, x0, t, eps)
    if labels is not None and getattr(s.model, "num_classes", 0):
        labels = drop_labels(labels, s.label_dropout, s.model.null_class)
    else:
        labels = None
    with autocast(s.device, s.amp_dtype):
        out = s.model(x_t, t, labels)
    target = training_target(s.schedule, x0, t, eps, s.prediction_type)
    per_sample = F.mse_loss(out.float(), target, reduction="none").flatten(1).mean(1)
    weight = 1.0
    if s.min_snr_gamma:
        weight = min_snr_weight(s.schedule, t, s.prediction_type, s.min_snr_gamma).to(x0.device)
    return (weight * per_sample).mean(), per_sample.detach(), t


def diffusion_step(s: DiffusionSetup, x0: torch.Tensor, labels=None, clip: float = 1.0
                   ) -> dict[str, torch.Tensor]:
    """One optimiser step with gradient clipping, LR schedule and EMA update.

    Returns the loss and the unweighted loss summed and counted per quarter of [0, T).
    """
    loss, per_sample, t = diffusion_loss(s, x0, labels)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)
    s.opt.step()
    s.lr_sched.step()
    s.ema.update_parameters(s.model)
    quarter = t * QUARTERS // s.schedule.timesteps
    sums = torch.zeros(QUARTERS, device=x0.device).index_add_(0, quarter, per_sample)
    counts = torch.bincount(quarter, minlength=QUARTERS).float()
    return {"loss": loss.detach(), "quarter_sums": sums, "quarter_counts": counts}
