"""The diffusion training step (pixel DDPM and latent diffusion): the loss on eps/x0/v or the
flow velocity, min-SNR weights, label dropout for classifier-free guidance, the AdamW step with
warm-up, clipping and EMA, and the Denoiser of the EMA weights that samplers take.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from models.diffusion import (Denoiser, NoiseSchedule, min_snr_weight, q_sample, sample_timesteps,
                              training_target)
from models.flow import FlowSchedule, interpolate
from models.samplers import sample
from train.common import eval_generator
from train.ema import make_ema
from train.inference import build_network, make_denoiser
from train.lr import LRPlan, PlannedLR
from utils import distributed
from utils.data import to_uint8
from utils.device import autocast

QUARTERS = 4  # the loss is also logged per quarter of the timestep range


@dataclass
class DiffusionSetup:
    """The built objects of a diffusion run."""
    model: torch.nn.Module
    ema: AveragedModel
    opt: torch.optim.Optimizer
    lr_sched: PlannedLR
    schedule: NoiseSchedule
    device: torch.device
    prediction_type: str  # what the network predicts: the schedule's kind decides (no default)
    amp_dtype: torch.dtype | None = None
    min_snr_gamma: float | None = None
    label_dropout: float = 0.0
    model_args: dict | None = None  # {"unet": kwargs}
    ddp: torch.nn.Module | None = None  # the model in DistributedDataParallel under torchrun

    @property
    def train_net(self) -> torch.nn.Module:
        """What the training step calls: the DDP wrapper under torchrun, else the model."""
        return self.ddp if self.ddp is not None else self.model

    @property
    def modules(self) -> dict:
        return {"model": self.model, "ema": self.ema, "opt": self.opt, "lr_sched": self.lr_sched}


def build_diffusion(model_args: dict, schedule: NoiseSchedule, device: torch.device, *,
                    prediction_type: str, lr: float, warmup_steps: int, total_steps: int,
                    lr_schedule: str = "constant", ema_decay: float = 0.995,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    **options) -> DiffusionSetup:
    """The network of model_args, AdamW (with `betas`), the warm-up LR plan and an EMA copy of
    the weights; the defaults are DiffusionMain's and LDMDiffusionMain's."""
    model = build_network(model_args).to(device)
    ema = make_ema(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas),
                            weight_decay=weight_decay)
    sched = PlannedLR(opt, LRPlan(warmup_steps, total_steps, lr_schedule))
    return DiffusionSetup(model, ema, opt, sched, schedule, device, prediction_type,
                          model_args=model_args, ddp=distributed.wrap(model, device), **options)


def drop_labels(labels: torch.Tensor, rate: float, null_class,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null class with probability `rate` (CFG training); the draws
    come from `generator`, or else from the shared global-batch stream. Labels may be rows (a
    caption's token ids, (B, L)): a dropped row becomes null_class, the empty caption's row."""
    if rate <= 0:
        return labels
    shape = labels.shape[:1]
    u = (torch.rand(shape, device=labels.device, generator=generator)
         if generator is not None
         else distributed.rand(shape, device=labels.device))
    null = torch.as_tensor(null_class, dtype=labels.dtype, device=labels.device)
    drop = (u < rate).view(-1, *([1] * (labels.dim() - 1)))
    return torch.where(drop, null.expand_as(labels), labels)


def diffusion_loss(setup: DiffusionSetup, x0: torch.Tensor, labels: torch.Tensor | None = None,
                   *, net: torch.nn.Module | None = None,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None):
    """Per-sample weighted MSE of `net` (default: the model being trained) to the target at a
    random time; returns (loss, per-sample loss, quarter of the time range of each sample).
    Times, eps and label dropout come from `generator` (evaluation), else from the global RNG
    as this rank's slice of a global-batch draw. `noise`: the eps paired with each x0 instead
    of a fresh draw (reflow's couplings, models/distill.py)."""
    net = setup.train_net if net is None else net
    schedule, T = setup.schedule, setup.schedule.timesteps
    if noise is not None:
        eps = noise.to(device=x0.device, dtype=x0.dtype)
    elif generator is None:
        eps = distributed.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    else:
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    if isinstance(schedule, FlowSchedule):  # continuous t, logit-normal (Esser et al. 2024)
        def draw(shape, device):
            return (distributed.randn(shape, device=device) if generator is None
                    else torch.randn(shape, device=device, generator=generator))
        t = schedule.sample_times(len(x0), x0.device, draw)
        x_t, net_t = interpolate(x0, t, eps), t * T
        quarter = (t * QUARTERS).long().clamp(max=QUARTERS - 1)
    else:
        t = (distributed.randint(T, len(x0), x0.device) if generator is None
             else sample_timesteps(len(x0), T, x0.device, generator))
        x_t, net_t, quarter = q_sample(schedule, x0, t, eps), t, t * QUARTERS // T
    if labels is not None and setup.model.num_classes:
        labels = drop_labels(labels, setup.label_dropout, setup.model.null_class, generator)
    else:
        labels = None
    # dropout masks from this rank's own stream under torchrun (utils/distributed.py)
    own = distributed.own_rng(setup.device) if generator is None else contextlib.nullcontext()
    with own, autocast(setup.device, setup.amp_dtype):
        out = net(x_t, net_t, labels)
    target = training_target(schedule, x0, t, eps, setup.prediction_type)
    per_sample = F.mse_loss(out.float(), target, reduction="none").flatten(1).mean(1)
    weight = 1.0
    if setup.min_snr_gamma:
        weight = min_snr_weight(schedule, t, setup.prediction_type,
                                setup.min_snr_gamma).to(x0.device)
    return (weight * per_sample).mean(), per_sample.detach(), quarter


def diffusion_step(setup: DiffusionSetup, x0: torch.Tensor, labels=None, clip: float = 1.0,
                   *, loss_fn=diffusion_loss, **loss_args) -> dict[str, torch.Tensor]:
    """One optimiser step on loss_fn(setup, x0, labels, **loss_args) (default the diffusion
    loss; distillation passes its own) with gradient clipping, LR schedule and EMA update.

    Returns the loss and the unweighted loss summed and counted per quarter of the time
    range (2, 4).
    """
    loss, per_sample, quarter = loss_fn(setup, x0, labels, **loss_args)
    setup.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(setup.model.parameters(), clip)
    setup.opt.step()
    setup.lr_sched.step()
    setup.ema.update_parameters(setup.model)
    sums = torch.zeros(QUARTERS, device=x0.device).index_add_(0, quarter, per_sample)
    counts = torch.bincount(quarter, minlength=QUARTERS).float()
    return {"loss": loss.detach(), "quarters": torch.stack([sums, counts])}


def ema_denoiser(setup: DiffusionSetup, clip_x0: bool = True) -> Denoiser:
    """The Denoiser of the EMA weights (the copy only ever used for inference)."""
    return make_denoiser(setup.ema.module, setup.schedule, setup.prediction_type,
                         amp_dtype=setup.amp_dtype, clip_x0=clip_x0)


@torch.no_grad()
def ema_samples(setup: DiffusionSetup, noise: torch.Tensor, sampler: str, steps: int,
                labels=None) -> torch.Tensor:
    """Samples from fixed noise with the EMA weights and a (fast) sampler, as uint8 on the CPU."""
    x = sample(ema_denoiser(setup), noise.clone(), sampler, steps, labels=labels,
               generator=eval_generator(setup.device)).x
    return to_uint8(x).cpu()


@torch.no_grad()
def held_out_loss(setup: DiffusionSetup, net: torch.nn.Module, x0: torch.Tensor,
                  batch_size: int = 128) -> float:
    """Unweighted loss of `net` (in eval mode) on held-out data, with the same t and noise at
    every call."""
    generator, was_training = eval_generator(setup.device), net.training
    total = torch.zeros((), device=setup.device)
    net.eval()
    try:
        for start in range(0, len(x0), batch_size):
            batch = x0[start:start + batch_size].to(setup.device)
            total += diffusion_loss(setup, batch, net=net, generator=generator)[1].sum()
    finally:
        net.train(was_training)
    return total.item() / len(x0)
