"""The diffusion family (pixel DDPM, kind "diffusion", and latent diffusion, kind "ldm"): the
loop, its figures and its checkpoint. The step, the loss and the EMA Denoiser are in
train/diffusion_step.py.
"""
import time
from typing import Callable, Iterable

import torch

from train.common import (LossMeter, Progress, batch_bar, checkpoint_frame, end_epoch,
                          epoch_range, open_log, resume_point, stack_frames, stop_guard)
from train.diffusion_step import QUARTERS, DiffusionSetup, diffusion_step, held_out_loss
from train.options import LoopOptions
from utils.data import DataSpec
from utils.plots import save_curves, save_progression
from utils.runs import Run, save_checkpoint


def train_diffusion(setup: DiffusionSetup, batches: Callable[[int], Iterable], steps_per_epoch: int,
                    test_x: torch.Tensor, run: Run, opts: LoopOptions, *, kind: str,
                    snapshot: Callable[[], torch.Tensor], fixed_noise: torch.Tensor,
                    sample_title: str = "EMA samples", row_labels: tuple = (),
                    extras: dict | None = None, guide_epoch: int = 0,
                    step: Callable[[tuple], dict] | None = None,
                    before_epoch: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Train for opts.epochs total epochs (continuing opts.state); returns the per-epoch frames.

    batches(epoch) yields (x0, labels) for one epoch (pixels or scaled latents); snapshot()
    returns that epoch's uint8 sample frame; test_x gives the held-out loss; `extras` go into
    the checkpoint (see diffusion_checkpoint). With guide_epoch > 0 the EMA weights at the end
    of that epoch are kept as the checkpoint's "guide", the weaker model autoguidance needs
    (Karras et al. 2024: the same network, trained for less time). Distillation
    (train/distill_run.py) passes `step(batch)`, its own optimiser step on a batch of any
    tuple, and `before_epoch(epoch)`, called before each epoch's first step; `extras` is read
    at every save, so a caller may update it in place.
    """
    progress, frames = resume_point(setup.modules, opts.state)
    log = open_log(run, progress, opts.config)
    guide = opts.state.get("guide") if opts.state else None
    epochs, deadline = opts.epochs, opts.deadline

    def save() -> None:
        kept = {"guide": guide} if guide is not None else {}
        save_checkpoint(diffusion_checkpoint(setup, kind, progress, opts.data, opts.config,
                                             fixed_noise, frames, **kept, **(extras or {})),
                        run.checkpoint)

    with stop_guard(run, progress, save):
        for epoch in (bar := epoch_range(run, progress.epoch, epochs)):
            meter, started = LossMeter(), time.perf_counter()
            quarters = torch.zeros(2, QUARTERS, device=setup.device)  # loss sums, counts
            if before_epoch is not None:
                before_epoch(epoch)
            for batch in batch_bar(batches(epoch), steps_per_epoch, epoch, epochs, deadline):
                out = diffusion_step(setup, *batch) if step is None else step(batch)
                quarters += out["quarters"]
                meter.update(progress.advance(batch[0]), {"loss": out["loss"]})
            speed = meter.count * opts.batch_size / (time.perf_counter() - started)
            frames.append(snapshot())
            record = {"epoch": epoch, "step": progress.step,
                      **evaluate(setup, meter, quarters, test_x), "img_per_s": speed}
            write_figures(run, frames, [*log.read(), record], sample_title, row_labels)
            if epoch == guide_epoch and setup.ema is not None:
                guide = {k: v.detach().clone() for k, v in setup.ema.state_dict().items()}
            if end_epoch(run, log, bar, progress, record, started=started, epochs=epochs,
                         checkpoint_every=opts.checkpoint_every, deadline=deadline, save=save,
                         images=frames[-1], schedulers=[setup.lr_sched],
                         epoch_steps=meter.count):
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
    save_progression(frames, run.plots / "progression.png",
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
    progression), and the family's extras (for "ldm": autoencoder_run and scale_factor; for a
    run with a GUIDE_EPOCH: guide, the EMA state_dict of that epoch)."""
    schedule = setup.schedule
    process = {"schedule": schedule.kind, "timesteps": schedule.timesteps,
               "prediction": setup.prediction_type,
               **({"logit_mean": schedule.logit_mean, "logit_std": schedule.logit_std}
                  if schedule.kind == "flow" else {})}
    return {**checkpoint_frame(kind, setup.model_args, data, progress, config, setup.modules),
            "diffusion": process, "fixed_noise": fixed_noise.cpu(),
            "frames": stack_frames(frames, progress.epoch), **extras}


LOSS_PANELS = [("loss", ["train_loss", "test_loss"]),
               ("loss per quarter of t", [f"train_loss_q{i + 1}" for i in range(QUARTERS)]),
               ("learning rate", ["lr"])]
