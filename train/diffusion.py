"""The diffusion family (pixel DDPM, kind "diffusion", and latent diffusion, kind "ldm"): the
loss on eps/x0/v with min-SNR weights and label dropout for classifier-free guidance, the AdamW
step with warm-up, clipping and EMA, the loop, its figures, its checkpoint, and the Denoiser of
the EMA weights that samplers take.
"""
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from models.diffusion import (Denoiser, NoiseSchedule, min_snr_weight, q_sample,
                              sample_timesteps, training_target)
from models.samplers import sample
from models.unet import UNet
from train.common import (Deadline, LossMeter, Progress, batch_bar, checkpoint_frame,
                          end_epoch, epoch_range, eval_generator, resume_point, stack_frames,
                          stop_guard)
from train.lr import LRPlan, PlannedLR
from utils import distributed
from utils.data import DataSpec, to_uint8
from utils.device import autocast
from utils.plots import save_curves, save_progression
from utils.runs import MetricsLog, Run, load_state, save_checkpoint

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
    amp_dtype: torch.dtype | None = None
    prediction_type: str = "epsilon"
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


def ema_with_warmup(decay: float):
    """multi_avg_fn for AveragedModel: ema <- d ema + (1 - d) param with
    d = min(decay, (1 + n) / (10 + n)) after n updates (the num_updates warm-up of TensorFlow's
    ExponentialMovingAverage). Without it the zero-initialised start keeps weight decay^n: 21%
    after 300 steps at 0.995, so early samples would come from a shrunken model.
    n stays a device tensor: no host sync per step."""
    def update(ema_params, params, num_averaged):
        n = num_averaged.to(torch.float32)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1 - d))
    return update


NETWORKS = {"unet": UNet}  # model_args names the denoising network's class


def build_network(model_args: dict) -> torch.nn.Module:
    """The denoising network of model_args ({"unet": kwargs})."""
    (name, kwargs), = model_args.items()
    return NETWORKS[name](**kwargs)


def build_diffusion(model_args: dict, schedule: NoiseSchedule, device: torch.device, *,
                    lr: float, warmup_steps: int, total_steps: int, lr_schedule: str = "constant",
                    ema_decay: float = 0.999, weight_decay: float = 0.0, **options
                    ) -> DiffusionSetup:
    """The network of model_args, AdamW, the warm-up LR plan and an EMA copy of the weights."""
    model = build_network(model_args).to(device)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(ema_decay))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = PlannedLR(opt, LRPlan(warmup_steps, total_steps, lr_schedule))
    return DiffusionSetup(model, ema, opt, sched, schedule, device, model_args=model_args,
                          ddp=distributed.wrap(model, device), **options)


def drop_labels(labels: torch.Tensor, rate: float, null_class: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null class with probability `rate` (CFG training); the draws
    come from `generator`, or else from the shared global-batch stream."""
    if rate <= 0:
        return labels
    u = (torch.rand(labels.shape, device=labels.device, generator=generator)
         if generator is not None
         else distributed.rand(labels.shape, device=labels.device))
    return torch.where(u < rate, torch.full_like(labels, null_class), labels)


def diffusion_loss(setup: DiffusionSetup, x0: torch.Tensor, labels: torch.Tensor | None = None,
                   *, net: torch.nn.Module | None = None,
                   generator: torch.Generator | None = None):
    """Per-sample weighted MSE of `net` (default: the model being trained) to the target at
    random t; returns (loss, per-sample, t). t, eps and label dropout come from `generator`
    (evaluation), else from the global RNG as this rank's slice of a global-batch draw."""
    net = setup.train_net if net is None else net
    T = setup.schedule.timesteps
    if generator is None:
        t = distributed.randint(T, len(x0), x0.device)
        eps = distributed.randn(x0.shape, dtype=x0.dtype, device=x0.device)
    else:
        t = sample_timesteps(len(x0), T, x0.device, generator)
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = q_sample(setup.schedule, x0, t, eps)
    if labels is not None and setup.model.num_classes:
        labels = drop_labels(labels, setup.label_dropout, setup.model.null_class, generator)
    else:
        labels = None
    with autocast(setup.device, setup.amp_dtype):
        out = net(x_t, t, labels)
    target = training_target(setup.schedule, x0, t, eps, setup.prediction_type)
    per_sample = F.mse_loss(out.float(), target, reduction="none").flatten(1).mean(1)
    weight = 1.0
    if setup.min_snr_gamma:
        weight = min_snr_weight(setup.schedule, t, setup.prediction_type,
                                setup.min_snr_gamma).to(x0.device)
    return (weight * per_sample).mean(), per_sample.detach(), t


def diffusion_step(setup: DiffusionSetup, x0: torch.Tensor, labels=None, clip: float = 1.0
                   ) -> dict[str, torch.Tensor]:
    """One optimiser step with gradient clipping, LR schedule and EMA update.

    Returns the loss and the unweighted loss summed and counted per quarter of [0, T) (2, 4).
    """
    loss, per_sample, t = diffusion_loss(setup, x0, labels)
    setup.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(setup.model.parameters(), clip)
    setup.opt.step()
    setup.lr_sched.step()
    setup.ema.update_parameters(setup.model)
    quarter = t * QUARTERS // setup.schedule.timesteps
    sums = torch.zeros(QUARTERS, device=x0.device).index_add_(0, quarter, per_sample)
    counts = torch.bincount(quarter, minlength=QUARTERS).float()
    return {"loss": loss.detach(), "quarters": torch.stack([sums, counts])}


def make_denoiser(net: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str, *,
                  amp_dtype: torch.dtype | None = None, clip_x0: bool = True) -> Denoiser:
    """The Denoiser of a network used for inference (eval mode, autocast, float32 output).
    clip_x0 for pixels in [-1, 1]; off for latents."""
    device = next(net.parameters()).device
    net.eval()

    def net_fn(x, t, labels):
        with autocast(device, amp_dtype):
            return net(x, t, labels).float()
    return Denoiser(net_fn, schedule, prediction_type, clip_x0)


def ema_denoiser(setup: DiffusionSetup, clip_x0: bool = True) -> Denoiser:
    """The Denoiser of the EMA weights (the copy only ever used for inference)."""
    return make_denoiser(setup.ema.module, setup.schedule, setup.prediction_type,
                         amp_dtype=setup.amp_dtype, clip_x0=clip_x0)


def ema_network(state: dict, model: torch.nn.Module) -> torch.nn.Module:
    """`model` with the EMA weights of a training checkpoint (no optimizer is built)."""
    ema = state["ema"]
    weights = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    load_state(model, weights, "EMA denoiser")
    return model.eval().requires_grad_(False)


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


def train_diffusion(setup: DiffusionSetup, batches: Callable[[int], Iterable], steps_per_epoch: int,
                    test_x: torch.Tensor, run: Run, *, kind: str, data: DataSpec, epochs: int,
                    batch_size: int, snapshot: Callable[[], torch.Tensor], config: dict,
                    fixed_noise: torch.Tensor, deadline: Deadline | None = None,
                    checkpoint_every: int = 1, state: dict | None = None,
                    sample_title: str = "EMA samples", row_labels: tuple = (),
                    extras: dict | None = None) -> list[torch.Tensor]:
    """Train for `epochs` total epochs (continuing `state`); returns the per-epoch frames.

    batches(epoch) yields (x0, labels) for one epoch (pixels or scaled latents); snapshot()
    returns that epoch's uint8 sample frame; test_x gives the held-out loss; `extras` go into
    the checkpoint (see diffusion_checkpoint).
    """
    progress, frames = resume_point(setup.modules, state)
    log = MetricsLog(run.metrics_path)
    log.truncate(progress.epoch)  # epochs logged after the checkpoint being resumed are redone

    def save() -> None:
        save_checkpoint(diffusion_checkpoint(setup, kind, progress, data, config, fixed_noise,
                                             frames, **(extras or {})), run.checkpoint)

    with stop_guard(run, progress, save):
        for epoch in (bar := epoch_range(run, progress.epoch, epochs)):
            meter, started = LossMeter(), time.perf_counter()
            quarters = torch.zeros(2, QUARTERS, device=setup.device)  # loss sums, counts
            for x0, labels in batch_bar(batches(epoch), steps_per_epoch, epoch, epochs,
                                        deadline):
                out = diffusion_step(setup, x0, labels)
                quarters += out["quarters"]
                meter.update(progress.advance(x0), {"loss": out["loss"]})
            speed = meter.count * batch_size / (time.perf_counter() - started)
            frames.append(snapshot())
            record = {"epoch": epoch, "step": progress.step,
                      **evaluate(setup, meter, quarters, test_x), "img_per_s": speed}
            write_figures(run, frames, [*log.read(), record], sample_title, row_labels)
            if end_epoch(run, log, bar, progress, record, started=started, epochs=epochs,
                         checkpoint_every=checkpoint_every, deadline=deadline, save=save):
                break
    return frames


def evaluate(setup: DiffusionSetup, meter: LossMeter, quarters: torch.Tensor, test_x: torch.Tensor
             ) -> dict:
    """The epoch's record: training loss (overall and per quarter of t), the EMA model's
    held-out loss, and the learning rate."""
    per_quarter = (quarters[0] / quarters[1].clamp(min=1)).tolist()
    return {"train_loss": meter.means()["loss"],
            **{f"train_loss_q{i + 1}": q for i, q in enumerate(per_quarter)},
            "test_loss": held_out_loss(setup, setup.ema.module, test_x),
            "lr": setup.lr_sched.get_last_lr()[0]}


def write_figures(run: Run, frames: list[torch.Tensor], records: list[dict], sample_title: str,
                  row_labels: tuple = ()) -> None:
    """The progression of EMA samples from fixed noise and the loss curves."""
    save_progression(frames, [r["epoch"] for r in records], run.plots / "progression.png",
                     title=sample_title, row_labels=row_labels)
    save_curves(records, LOSS_PANELS, run.plots / "losses.png", log_y=["loss"],
                title=f"diffusion {run.name}")


def diffusion_checkpoint(setup: DiffusionSetup, kind: str, progress: Progress, data: DataSpec,
                         config: dict, fixed_noise: torch.Tensor, frames: list[torch.Tensor],
                         **extras) -> dict:
    """The diffusion checkpoint: version, kind ("diffusion" for pixels, "ldm" for latents),
    model_args {"unet"}, data (DataSpec; for "ldm" the autoencoder run's), epoch, step, rng,
    config (the run's constants), the state_dicts of model, ema, opt and lr_sched, diffusion
    {schedule, timesteps, prediction} (what the Denoiser needs), fixed_noise and frames (the
    progression), and the family's extras (for "ldm": autoencoder_run and scale_factor)."""
    process = {"schedule": setup.schedule.kind, "timesteps": setup.schedule.timesteps,
               "prediction": setup.prediction_type}
    return {**checkpoint_frame(kind, setup.model_args, data, progress, config, setup.modules),
            "diffusion": process, "fixed_noise": fixed_noise.cpu(),
            "frames": stack_frames(frames, progress.epoch), **extras}


def load_diffusion_networks(state: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    """{"net": the denoising network with the checkpoint's EMA weights}, in eval mode."""
    return {"net": ema_network(state, build_network(state["model_args"]).to(device))}


def checkpoint_denoiser(state: dict, net: torch.nn.Module, *, amp_dtype=None,
                        clip_x0: bool = True) -> Denoiser:
    """The Denoiser of a loaded network with the schedule and prediction type it trained with."""
    process = state["diffusion"]
    schedule = NoiseSchedule(process["schedule"], process["timesteps"])
    return make_denoiser(net, schedule, process["prediction"], amp_dtype=amp_dtype,
                         clip_x0=clip_x0)


LOSS_PANELS = [("loss", ["train_loss", "test_loss"]),
               ("loss per quarter of t", [f"train_loss_q{i + 1}" for i in range(QUARTERS)]),
               ("learning rate", ["lr"])]
