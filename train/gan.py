"""The DCGAN family: built objects, the training step, the loop (alternating D and G Adam steps,
per-epoch held-out losses and progression frames), its figures and its checkpoint."""
import time
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel

from models.gan import Discriminator, Generator, discriminator_loss, generator_loss, r1_penalty
from train.common import (LossMeter, Progress, checkpoint_frame, end_epoch, epoch_batches,
                          epoch_range, eval_generator, open_log, resume_point, stack_frames,
                          stop_guard)
from train.ema import make_ema
from train.gan_figures import write_figures
from train.inference import generate, recalibrate_batchnorm
from train.options import LoopOptions
from train.lr import LRPlan, PlannedLR
from utils import distributed
from utils.data import DataSpec, ImageData
from utils.device import autocast
from utils.runs import Run, save_checkpoint

@dataclass
class GANSetup:
    """The built objects of a GAN run."""
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    model_args: dict | None = None  # {"generator": kwargs, "discriminator": kwargs}
    g_ddp: torch.nn.Module | None = None  # the networks in DistributedDataParallel (torchrun)
    d_ddp: torch.nn.Module | None = None
    loss: str = "bce"  # bce (non-saturating) or hinge
    r1_gamma: float = 0.0  # R1 penalty weight on D (Mescheder et al. 2018); 0: off
    ema: AveragedModel | None = None  # EMA of G's weights (Yazici et al. 2019), if asked for
    schedulers: list[PlannedLR] = field(default_factory=list)  # G's and D's, unless constant

    @property
    def modules(self) -> dict:
        sched_g, sched_d = self.schedulers or (None, None)
        return {"generator": self.generator, "discriminator": self.discriminator,
                "opt_g": self.opt_g, "opt_d": self.opt_d, "ema": self.ema,
                "sched_g": sched_g, "sched_d": sched_d}

    @property
    def sampler(self) -> Generator:
        """The generator that draws the figures and is evaluated: the EMA copy if there is one."""
        return self.ema.module if self.ema is not None else self.generator

    @property
    def train_nets(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(G, D) as the training step calls them: DDP wrappers under torchrun."""
        return self.g_ddp or self.generator, self.d_ddp or self.discriminator

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_gan(latent_dim: int, image_size: int, channels: int, width: int, lr: float,
              betas: tuple[float, float], device: torch.device, amp_dtype=None,
              channels_last: bool = False, *, loss: str = "bce", spectral_norm: bool = False,
              r1_gamma: float = 0.0, ema_decay: float = 0.0, lr_d: float | None = None,
              upsample: str = "transposed", lr_schedule: str = "constant",
              total_steps: int = 0, d_norm: str = "batch", mbstd_group: int = 0,
              d_width: int | None = None) -> GANSetup:
    """Generator, discriminator (of d_width channels in its first layer; None: width) and their
    Adam optimizers (Radford et al.: lr 2e-4, beta1 0.5; lr_d, if given, is D's own rate: the
    two time-scale rule of Heusel et al. 2017) with both rates on lr_schedule over total_steps
    (no warm-up), the adversarial loss, the discriminator's stabilisers (spectral_norm, d_norm,
    mbstd_group: see Discriminator) and, with ema_decay > 0, an exponential moving average of G's
    weights (with the warm-up of ema_with_warmup)."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    g = Generator(latent_dim, image_size, channels, width, upsample).to(device,
                                                                       memory_format=memory)
    d_args = dict(image_size=image_size, channels=channels, width=d_width or width,
                  spectral_norm=spectral_norm, norm=d_norm, mbstd_group=mbstd_group)
    d = Discriminator(**d_args).to(device, memory_format=memory)
    args = {"generator": dict(latent_dim=latent_dim, image_size=image_size, channels=channels,
                              width=width, upsample=upsample),
            "discriminator": d_args}
    opt_g = torch.optim.Adam(g.parameters(), lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr if lr_d is None else lr_d, betas=betas)
    schedulers = [] if lr_schedule == "constant" else [
        PlannedLR(opt, LRPlan(0, total_steps, lr_schedule)) for opt in (opt_g, opt_d)]
    return GANSetup(g, d, opt_g, opt_d, device, amp_dtype, channels_last, args,
                    distributed.wrap(g, device), distributed.wrap(d, device), loss, r1_gamma,
                    make_ema(g, ema_decay), schedulers)


def gan_step(setup: GANSetup, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One discriminator step (with the R1 penalty gamma / 2 E||grad_x D(x)||^2 on real images
    when r1_gamma > 0) then one generator step on the same fakes."""
    generator, discriminator = setup.train_nets
    z = distributed.randn((len(real), setup.generator.latent_dim), device=setup.device)
    real = setup.fmt(real).requires_grad_(setup.r1_gamma > 0)
    with autocast(setup.device, setup.amp_dtype):
        fake = generator(z)
        real_logits = discriminator(real)
        fake_logits = discriminator(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits, setup.loss)
    penalty = (r1_penalty(real_logits, real) if setup.r1_gamma > 0
               else torch.zeros((), device=setup.device))
    setup.opt_d.zero_grad(set_to_none=True)
    (d_loss + 0.5 * setup.r1_gamma * penalty).backward()
    setup.opt_d.step()
    # G's step needs D's gradient with respect to its input only: with D's weights frozen the
    # backward skips their gradients (a third of D's backward work) and, under torchrun, their
    # all-reduce; D runs unwrapped, since its DDP wrapper would wait for those gradients
    setup.discriminator.requires_grad_(False)
    try:
        with autocast(setup.device, setup.amp_dtype):
            g_loss = generator_loss(setup.discriminator(fake), setup.loss)
        setup.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
    finally:
        setup.discriminator.requires_grad_(True)
    setup.opt_g.step()
    for scheduler in setup.schedulers:
        scheduler.step()
    if setup.ema is not None:
        setup.ema.update_parameters(setup.generator)
    return {"d_loss": d_loss, "g_loss": g_loss,
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(), "r1": penalty.detach()}


@torch.no_grad()
def evaluate_gan(setup: GANSetup, real: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """Held-out losses and mean D outputs, computed as in training (BatchNorm batch statistics).

    The discriminator only ever sees all-real or all-fake batches, so its running statistics
    describe neither; eval mode would report numbers unrelated to the trained model.
    """
    meter, generator = LossMeter(every=10**9), eval_generator(setup.device)
    for start in range(0, len(real), batch_size):
        x = real[start:start + batch_size].to(setup.device)
        z = torch.randn(len(x), setup.generator.latent_dim, device=setup.device,
                        generator=generator)
        with autocast(setup.device, setup.amp_dtype):
            real_logits = setup.discriminator(setup.fmt(x))
            fake_logits = setup.discriminator(setup.generator(z))
        meter.update(0, {"d_loss": discriminator_loss(real_logits, fake_logits, setup.loss),
                         "g_loss": generator_loss(fake_logits, setup.loss),
                         "d_real": torch.sigmoid(real_logits.float()).mean(),
                         "d_fake": torch.sigmoid(fake_logits.float()).mean()})
    return meter.means()


def train_gan(setup: GANSetup, train_data: ImageData, test_data: ImageData, run: Run,
              opts: LoopOptions, fixed_z: torch.Tensor) -> list[torch.Tensor]:
    """Train for opts.epochs total epochs (continuing opts.state if given); returns the
    progression frames."""
    progress, frames = resume_point(setup.modules, opts.state)
    log = open_log(run, progress, opts.config)
    epochs, batch_size, deadline = opts.epochs, opts.batch_size, opts.deadline
    train_data = train_data.to(setup.device)
    test_x, _ = test_data.first(1000)

    def save() -> None:
        save_checkpoint(gan_checkpoint(setup, progress, opts.data, opts.config, fixed_z, frames),
                        run.checkpoint)

    with stop_guard(run, progress, save):
        for epoch in (bar := epoch_range(run, progress.epoch, epochs)):
            meter, started = LossMeter(), time.perf_counter()
            for real, _ in epoch_batches(train_data, batch_size, setup.device, opts.flip, epoch,
                                         epochs, deadline):
                losses = gan_step(setup, real)
                meter.update(progress.advance(real), losses)
            record = evaluate(setup, meter, test_x, batch_size / (time.perf_counter() - started))
            recalibrate_batchnorm(setup.sampler)
            frames.append(generate(setup.sampler, fixed_z[:opts.progression_rows], setup.amp_dtype))
            record = {"epoch": epoch, "step": progress.step, **record}
            write_figures(run.plots, frames, [*log.read(), record], run.name)
            if end_epoch(run, log, bar, progress, record, started=started, epochs=epochs,
                         checkpoint_every=opts.checkpoint_every, deadline=deadline, save=save,
                         images=frames[-1], schedulers=setup.schedulers,
                         epoch_steps=meter.count):
                break
    return frames


def evaluate(setup: GANSetup, meter: LossMeter, test_x: torch.Tensor, steps_per_s: float) -> dict:
    """The epoch's record: mean training terms, held-out terms and training speed."""
    return {**{f"train_{k}": v for k, v in meter.means().items()},
            **{f"test_{k}": v for k, v in evaluate_gan(setup, test_x).items()},
            "img_per_s": meter.count * steps_per_s, "lr": setup.opt_g.param_groups[0]["lr"]}


def gan_checkpoint(setup: GANSetup, progress: Progress, data: DataSpec, config: dict,
                   fixed_z: torch.Tensor, frames: list[torch.Tensor]) -> dict:
    """The GAN checkpoint: version, kind "gan", model_args {"generator", "discriminator"}, data
    (DataSpec), epoch, step, rng, config (the run's constants), the state_dicts of generator,
    discriminator, opt_g, opt_d, (with EMA_DECAY) ema, (with a cosine LR_SCHEDULE) sched_g
    and sched_d, fixed_z (the progression latents) and frames (uint8 progression images of
    the completed epochs)."""
    return {**checkpoint_frame("gan", setup.model_args, data, progress, config, setup.modules),
            "fixed_z": fixed_z.cpu(), "frames": stack_frames(frames, progress.epoch)}
