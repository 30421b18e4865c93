"""Stage 1 of latent diffusion: the VAE-GAN autoencoder loop (reconstruction + KL + adversarial +
feature matching, a patch discriminator), then latent statistics and the latent cache."""
import math
import time
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel

from models.autoencoder import (Autoencoder, PatchDiscriminator, adaptive_gan_weight,
                                discriminator_loss, feature_matching, generator_adversarial,
                                kl_term, reconstruction_term)
from models.vae import AdaptiveBetaScheduler
from train.common import (LossMeter, LRPlan, PlannedLR, epoch_batches, resume_point,
                          run_epochs, save_training_state)
from train.diffusion import ema_with_warmup
from utils.data import ImageData, iterate_batches
from utils.device import autocast
from utils.runs import MetricsLog, Run

KL_MODES = ("fixed", "warmup", "adaptive")


@dataclass
class AELoss:
    """Weights and kinds of the four autoencoder loss terms."""
    reconstruction: str = "l1"  # l1 or mse
    kl_weight: float = 1e-4  # on the KL summed over the latent grid
    kl_mode: str = "warmup"  # fixed, warmup (linear ramp over kl_warmup_steps) or adaptive
    kl_warmup_steps: int = 1000
    adv_weight: float = 0.1  # adversarial weight (times the adaptive ratio if adaptive_adv)
    adv_start: int = 500  # step where the adversarial term starts
    adv_warmup_steps: int = 500  # its linear ramp after adv_start
    adaptive_adv: bool = True  # scale by ||grad rec|| / ||grad adv|| at the last layer
    adv_max: float = 1e4  # clamp on that ratio
    fm_weight: float = 1.0  # feature matching (active with the adversarial term)
    disc_loss: str = "hinge"  # hinge or bce


@dataclass
class AESetup:
    """The built objects of an autoencoder run."""
    ae: Autoencoder
    disc: PatchDiscriminator
    opt_ae: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_ae: PlannedLR
    sched_d: PlannedLR
    device: torch.device
    loss: AELoss = field(default_factory=AELoss)
    beta: AdaptiveBetaScheduler | None = None  # KL-weight multiplier in kl_mode "adaptive"
    ema: AveragedModel | None = None
    amp_dtype: torch.dtype | None = None

    @property
    def modules(self) -> dict:
        return {"ae": self.ae, "disc": self.disc, "opt_ae": self.opt_ae, "opt_d": self.opt_d,
                "sched_ae": self.sched_ae, "sched_d": self.sched_d, "beta_scheduler": self.beta,
                "ema": self.ema}

    @property
    def inference_ae(self) -> Autoencoder:
        """The EMA autoencoder when there is one, else the trained one."""
        return self.ema.module if self.ema is not None else self.ae

    def kl_weight(self, step: int) -> float:
        w = self.loss.kl_weight
        if self.loss.kl_mode == "warmup":
            return w * min(1.0, (step + 1) / max(1, self.loss.kl_warmup_steps))
        if self.loss.kl_mode == "adaptive":
            return w * self.beta.beta
        return w

    def adv_ramp(self, step: int) -> float:
        """0 before adv_start, then a linear ramp to 1 over adv_warmup_steps."""
        if step < self.loss.adv_start:
            return 0.0
        return min(1.0, (step - self.loss.adv_start + 1) / max(1, self.loss.adv_warmup_steps))


def build_autoencoder(model_args: dict, disc_args: dict, device: torch.device, *,
                      lr: tuple[float, float], lr_min: tuple[float, float], total_steps: int,
                      loss: AELoss, ema_decay: float = 0.0, amp_dtype=None) -> AESetup:
    """Adam (0.5, 0.9) for both networks with per-step cosine-annealed learning rates."""
    if loss.kl_mode not in KL_MODES:
        raise ValueError(f"KL mode must be one of {KL_MODES}, got {loss.kl_mode!r}")
    ae = Autoencoder(**model_args).to(device)
    disc = PatchDiscriminator(**disc_args).to(device)
    opt_ae = torch.optim.Adam(ae.parameters(), lr[0], betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr[1], betas=(0.5, 0.9))
    ema = AveragedModel(ae, multi_avg_fn=ema_with_warmup(ema_decay)) if ema_decay else None
    beta = AdaptiveBetaScheduler() if loss.kl_mode == "adaptive" else None
    sched_ae, sched_d = (PlannedLR(opt, LRPlan(0, max(1, total_steps), "cosine", low / high))
                         for opt, low, high in ((opt_ae, lr_min[0], lr[0]),
                                                (opt_d, lr_min[1], lr[1])))
    return AESetup(ae, disc, opt_ae, opt_d, sched_ae, sched_d, device, loss, beta, ema,
                   amp_dtype)


def ae_step(s: AESetup, x: torch.Tensor, step: int, clip: float = 1.0) -> dict[str, torch.Tensor]:
    """One autoencoder step on the weighted loss, then one discriminator step."""
    L, ramp = s.loss, s.adv_ramp(step)
    with autocast(s.device, s.amp_dtype):
        x_hat, mean, logvar = s.ae(x)
    rec = reconstruction_term(x, x_hat.float(), L.reconstruction)
    kl = kl_term(mean, logvar)
    total = rec + s.kl_weight(step) * kl
    zero = torch.zeros((), device=x.device)
    adv, fm, ratio = zero, zero, zero
    if ramp > 0 and (L.adv_weight > 0 or L.fm_weight > 0):
        with autocast(s.device, s.amp_dtype):
            fake_logits, fake_feats = s.disc(x_hat)
            _, real_feats = s.disc(x)
        adv = generator_adversarial(fake_logits, L.disc_loss)
        fm = feature_matching(real_feats, fake_feats)
        ratio = (adaptive_gan_weight(rec, adv, s.ae.last_layer, L.adv_max) if L.adaptive_adv
                 else torch.ones((), device=x.device))
        total = total + ramp * (L.adv_weight * ratio * adv + L.fm_weight * fm)
    s.opt_ae.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(s.ae.parameters(), clip)
    s.opt_ae.step()
    s.sched_ae.step()
    if s.ema is not None:
        s.ema.update_parameters(s.ae)
    with autocast(s.device, s.amp_dtype):
        real_logits, _ = s.disc(x)
        fake_logits, _ = s.disc(x_hat.detach())
    d_loss = discriminator_loss(real_logits, fake_logits, L.disc_loss)
    s.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(s.disc.parameters(), clip)
    s.opt_d.step()
    s.sched_d.step()
    return {"loss": total.detach(), "rec": rec.detach(), "kl": kl.detach(), "adv": adv.detach(),
            "fm": fm.detach(), "adv_ratio": ratio, "d_loss": d_loss.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_recon": torch.sigmoid(fake_logits.detach().float()).mean()}


def psnr(mse_minus1_1: float) -> float:
    """PSNR (dB) of images in [-1, 1]: 10 log10(1 / MSE) on the [0, 1] scale (MSE / 4)."""
    return 10 * math.log10(4.0 / max(mse_minus1_1, 1e-12))


@torch.no_grad()
def reconstruct(ae: Autoencoder, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode the posterior means (deterministic reconstructions), clamped to [-1, 1]."""
    device = next(ae.parameters()).device
    ae.eval()
    out = [ae.decode(ae.encode(x[i:i + batch_size].to(device))[0]).float().clamp(-1, 1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def held_out_mse(ae: Autoencoder, x: torch.Tensor) -> float:
    return (reconstruct(ae, x) - x.cpu()).pow(2).mean().item()


def train_autoencoder(s: AESetup, train_data: ImageData, test_x: torch.Tensor, run: Run, *,
                      epochs: int, batch_size: int, config: dict, on_epoch=None,
                      checkpoint_every: int = 1, state: dict | None = None, **extra) -> None:
    """Train for `epochs` total epochs (continuing `state`). on_epoch(epoch, records) draws
    figures; `extra` goes into every checkpoint."""
    epoch0, step, frames = resume_point(s.modules, state)
    train_data = train_data.to(s.device)

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        meter, started = LossMeter(), time.perf_counter()
        kl_w, adv_w = s.kl_weight(step), s.loss.adv_weight * s.adv_ramp(step)
        for x, _ in epoch_batches(train_data, batch_size, s.device, False, epoch, epochs):
            meter.update(step + 1, ae_step(s, x, step))
            step += 1
        train = meter.means()
        if s.beta is not None:  # once per epoch, as in the beta-VAE
            s.beta.update(train["kl"], train["rec"])
        mse = held_out_mse(s.inference_ae, test_x)
        s.ae.train()
        record = {"step": step, **{f"train_{k}": v for k, v in train.items()},
                  "test_mse": mse, "test_psnr": psnr(mse), "kl_weight": kl_w,
                  "adv_weight": adv_w, "lr_ae": s.sched_ae.get_last_lr()[0],
                  "img_per_s": meter.count * batch_size / (time.perf_counter() - started)}
        if on_epoch:
            on_epoch(epoch, [*MetricsLog(run.metrics_path).read(), {"epoch": epoch, **record}])
        return record

    def save(epoch: int) -> None:
        save_training_state(run.checkpoint, s.modules, epoch, step, config,
                            frames=torch.zeros(0), **extra)

    run_epochs(run, epoch0, epochs, checkpoint_every, train_epoch, save)


@torch.no_grad()
def encode_dataset(ae: Autoencoder, data: ImageData, batch_size: int = 256) -> dict:
    """The posterior (mean, logvar) of every image, with its label, on the CPU (the cache)."""
    device = next(ae.parameters()).device
    ae.eval()
    means, logvars, labels = [], [], []
    for x, y in iterate_batches(data, batch_size, device, shuffle=False, drop_last=False):
        mean, logvar = ae.encode(x)
        means.append(mean.float().cpu())
        logvars.append(logvar.float().cpu())
        labels.append(y.cpu())
    return {"mean": torch.cat(means), "logvar": torch.cat(logvars), "labels": torch.cat(labels)}


def latent_statistics(cache: dict, seed: int = 0) -> dict:
    """Per-channel mean and std of posterior samples z = mean + sigma * eps over the cache, and
    the scale factor s = 1 / std over all latent elements (Rombach et al. 2022, sec. G)."""
    g = torch.Generator().manual_seed(seed)
    mean, logvar = cache["mean"].double(), cache["logvar"].double()
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g, dtype=torch.float64)
    return {"channel_mean": z.mean(dim=(0, 2, 3)).tolist(),
            "channel_std": z.std(dim=(0, 2, 3)).tolist(),
            "mean": z.mean().item(), "std": z.std().item(), "scale_factor": 1 / z.std().item()}
