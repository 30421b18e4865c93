"""The DCGAN training loop: alternating D and G Adam steps, per-epoch eval, progression frames."""
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models.gan import Discriminator, Generator, discriminator_loss, generator_loss
from train.common import (LossMeter, epoch_batches, eval_generator, resume_point, run_epochs,
                          save_training_state, stack_frames)
from utils.data import ImageData, to_uint8
from utils.device import autocast
from utils.plots import save_curves, save_progression
from utils.runs import MetricsLog, Run

LOSS_PANELS = [("losses", ["train_d_loss", "train_g_loss", "test_d_loss", "test_g_loss"]),
               ("discriminator outputs", ["train_d_real", "train_d_fake", "test_d_real",
                                          "test_d_fake"])]


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
    model_args: dict | None = None  # what build_gan needs to rebuild the networks

    @property
    def modules(self) -> dict:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "opt_g": self.opt_g, "opt_d": self.opt_d}

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_gan(latent_dim: int, image_size: int, channels: int, width: int, lr: float,
              betas: tuple[float, float], device: torch.device, amp_dtype=None,
              channels_last: bool = False) -> GANSetup:
    """Generator, discriminator and their Adam optimizers (Radford et al.: lr 2e-4, beta1 0.5)."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    g = Generator(latent_dim, image_size, channels, width).to(device, memory_format=memory)
    d = Discriminator(image_size, channels, width).to(device, memory_format=memory)
    args = dict(latent_dim=latent_dim, image_size=image_size, channels=channels, width=width)
    return GANSetup(g, d, torch.optim.Adam(g.parameters(), lr, betas=betas),
                    torch.optim.Adam(d.parameters(), lr, betas=betas), device, amp_dtype,
                    channels_last, args)


def gan_step(s: GANSetup, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """One discriminator step then one non-saturating generator step on the same fakes."""
    z = torch.randn(len(real), s.generator.latent_dim, device=s.device)
    with autocast(s.device, s.amp_dtype):
        fake = s.generator(z)
        real_logits = s.discriminator(s.fmt(real))
        fake_logits = s.discriminator(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
    s.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    s.opt_d.step()
    with autocast(s.device, s.amp_dtype):
        g_loss = generator_loss(s.discriminator(fake))
    s.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    s.opt_g.step()
    return {"d_loss": d_loss, "g_loss": g_loss,
            "d_real": torch.sigmoid(real_logits.float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.float()).mean()}


@torch.no_grad()
def evaluate_gan(s: GANSetup, real: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """Held-out losses and mean D outputs, computed as in training (BatchNorm batch statistics).

    The discriminator only ever sees all-real or all-fake batches, so its running statistics
    describe neither; eval mode would report numbers unrelated to the trained model.
    """
    meter, generator = LossMeter(every=10**9), eval_generator(s.device)
    for start in range(0, len(real), batch_size):
        x = real[start:start + batch_size].to(s.device)
        z = torch.randn(len(x), s.generator.latent_dim, device=s.device, generator=generator)
        with autocast(s.device, s.amp_dtype):
            real_logits = s.discriminator(s.fmt(x))
            fake_logits = s.discriminator(s.generator(z))
        meter.update(0, {"d_loss": discriminator_loss(real_logits, fake_logits),
                         "g_loss": generator_loss(fake_logits),
                         "d_real": torch.sigmoid(real_logits.float()).mean(),
                         "d_fake": torch.sigmoid(fake_logits.float()).mean()})
    return meter.means()


@torch.no_grad()
def recalibrate_batchnorm(generator: Generator, batches: int = 16, batch_size: int = 256,
                          seed: int = 0) -> None:
    """Set the generator's BatchNorm running statistics to their average over z ~ N(0, I).

    Training updates them with momentum 0.1 while G keeps changing, so they lag behind; the
    exact population statistics make eval-mode samples match the current generator. A private
    RNG keeps the global one (and so resumed runs) untouched.
    """
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    generator.train()
    for _ in range(batches):
        generator(torch.randn(batch_size, generator.latent_dim, device=device, generator=rng))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def sample(generator: Generator, z: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    """Images for latents z, generator in eval mode, as uint8 on the CPU."""
    was_training = generator.training
    generator.eval()
    with autocast(z.device, amp_dtype):
        images = to_uint8(generator(z).float()).cpu()
    generator.train(was_training)
    return images


def train_gan(s: GANSetup, train_data: ImageData, test_data: ImageData, run: Run, *,
              epochs: int, batch_size: int, fixed_z: torch.Tensor, config: dict,
              checkpoint_every: int = 5, progression_rows: int = 8, flip: bool = False,
              state: dict | None = None) -> list[torch.Tensor]:
    """Train for `epochs` total epochs (continuing `state` if given); returns progression frames."""
    epoch0, step, frames = resume_point(s.modules, state)
    train_data = train_data.to(s.device)
    test_x, _ = test_data.first(1000)

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        meter, started = LossMeter(), time.perf_counter()
        bar = epoch_batches(train_data, batch_size, s.device, flip, epoch, epochs)
        for real, _ in bar:
            losses = gan_step(s, real)
            step += 1
            latest = meter.update(step, losses)
            if latest:
                bar.set_postfix({k: f"{v:.3f}" for k, v in latest.items()}, refresh=False)
        train = meter.means()
        speed = meter.count * batch_size / (time.perf_counter() - started)
        recalibrate_batchnorm(s.generator)
        frames.append(sample(s.generator, fixed_z[:progression_rows], s.amp_dtype))
        record = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in train.items()},
                  **{f"test_{k}": v for k, v in evaluate_gan(s, test_x).items()},
                  "img_per_s": speed}
        write_figures(run.plots, frames, [*MetricsLog(run.metrics_path).read(), record], run.name)
        return record

    def save(epoch: int) -> None:
        save_training_state(run.checkpoint, s.modules, epoch, step, config,
                            model_args=s.model_args, fixed_z=fixed_z.cpu(),
                            frames=stack_frames(frames, epoch))

    run_epochs(run, epoch0, epochs, checkpoint_every, train_epoch, save)
    return frames


def write_figures(folder: Path, frames: list[torch.Tensor], records: list[dict], name: str
                  ) -> None:
    """The progression grid (fixed latents across epochs) and the loss curves."""
    if frames:
        save_progression(frames, [r["epoch"] for r in records], folder / "progression.png",
                         title="Generator on fixed latents across training")
    save_curves(records, LOSS_PANELS, folder / "losses.png", title=f"DCGAN {name}")
