"""Stage 1 of latent diffusion (kind "ldm_autoencoder"): the VAE-GAN autoencoder step
(reconstruction + KL + adversarial + feature matching against a patch discriminator), the loop,
its figures, and its checkpoint, which ends with the latent statistics and scale factor."""
import time
from dataclasses import dataclass, field

import torch
from torch.optim.swa_utils import AveragedModel

from models.autoencoder import (Autoencoder, PatchDiscriminator, adaptive_gan_weight,
                                discriminator_loss, feature_matching, generator_adversarial,
                                kl_term, reconstruction_term)
from models.vae import AdaptiveBetaScheduler, reparameterize
from train.common import (LossMeter, Progress, checkpoint_frame, end_epoch, epoch_batches,
                          epoch_range, open_log, resume_point, stop_guard)
from train.ema import make_ema
from train.inference import psnr, reconstruct
from train.latents import encode_dataset, latent_statistics, save_cache
from train.options import LoopOptions
from train.lr import LRPlan, PlannedLR
from utils import distributed
from utils.data import DataSpec, ImageData
from utils.device import autocast
from utils.plots import save_curves, save_labelled_grid, save_latent_histogram
from utils.runs import Run, save_checkpoint, write_json

KL_MODES = ("fixed", "warmup", "adaptive")


@dataclass
class AELoss:
    """Weights and kinds of the four autoencoder loss terms."""
    reconstruction: str = "l1"  # l1 or mse
    kl_weight: float = 1e-5  # on the KL summed over the latent grid
    kl_mode: str = "warmup"  # fixed, warmup (linear ramp over kl_warmup_steps) or adaptive
    kl_warmup_steps: int = 500
    adv_weight: float = 0.5  # adversarial weight (times the adaptive ratio if adaptive_adv)
    adv_start: int = 400  # step where the adversarial term starts
    adv_warmup_steps: int = 200  # its linear ramp after adv_start
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
    model_args: dict | None = None  # {"autoencoder": kwargs, "discriminator": kwargs}
    ae_ddp: torch.nn.Module | None = None  # the networks in DistributedDataParallel (torchrun)
    disc_ddp: torch.nn.Module | None = None

    @property
    def train_nets(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(autoencoder, discriminator) as the training step calls them."""
        return self.ae_ddp or self.ae, self.disc_ddp or self.disc

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
    ema = make_ema(ae, ema_decay)
    beta = AdaptiveBetaScheduler() if loss.kl_mode == "adaptive" else None
    sched_ae, sched_d = (PlannedLR(opt, LRPlan(0, max(1, total_steps), "cosine", low / high))
                         for opt, low, high in ((opt_ae, lr_min[0], lr[0]),
                                                (opt_d, lr_min[1], lr[1])))
    return AESetup(ae, disc, opt_ae, opt_d, sched_ae, sched_d, device, loss, beta, ema,
                   amp_dtype, {"autoencoder": dict(model_args), "discriminator": dict(disc_args)},
                   distributed.wrap(ae, device), distributed.wrap(disc, device))


def ae_step(setup: AESetup, x: torch.Tensor, step: int, clip: float = 1.0
            ) -> dict[str, torch.Tensor]:
    """One autoencoder step on the weighted loss, then one discriminator step."""
    weights, ramp = setup.loss, setup.adv_ramp(step)
    ae, disc = setup.train_nets
    with autocast(setup.device, setup.amp_dtype):
        x_hat, mean, logvar = ae(x, noise=distributed.randn)
    rec = reconstruction_term(x, x_hat.float(), weights.reconstruction)
    kl = kl_term(mean, logvar)
    total = rec + setup.kl_weight(step) * kl
    zero = torch.zeros((), device=x.device)
    adv, fm, ratio = zero, zero, zero
    if ramp > 0 and (weights.adv_weight > 0 or weights.fm_weight > 0):
        with autocast(setup.device, setup.amp_dtype):
            fake_logits, fake_feats = disc(x_hat)
            _, real_feats = disc(x)
        adv = generator_adversarial(fake_logits, weights.disc_loss)
        fm = feature_matching(real_feats, fake_feats)
        ratio = (adaptive_gan_weight(rec, adv, setup.ae.last_layer, weights.adv_max,
                                     distributed.mean_over_ranks)
                 if weights.adaptive_adv else torch.ones((), device=x.device))
        total = total + ramp * (weights.adv_weight * ratio * adv + weights.fm_weight * fm)
    setup.opt_ae.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(setup.ae.parameters(), clip)
    setup.opt_ae.step()
    setup.sched_ae.step()
    if setup.ema is not None:
        setup.ema.update_parameters(setup.ae)
    with autocast(setup.device, setup.amp_dtype):
        real_logits, _ = disc(x)
        fake_logits, _ = disc(x_hat.detach())
    d_loss = discriminator_loss(real_logits, fake_logits, weights.disc_loss)
    setup.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(setup.disc.parameters(), clip)
    setup.opt_d.step()
    setup.sched_d.step()
    return {"loss": total.detach(), "rec": rec.detach(), "kl": kl.detach(), "adv": adv.detach(),
            "fm": fm.detach(), "adv_ratio": ratio, "d_loss": d_loss.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_recon": torch.sigmoid(fake_logits.detach().float()).mean()}


def held_out_mse(ae: Autoencoder, x: torch.Tensor) -> float:
    return (reconstruct(ae, x) - x.cpu()).pow(2).mean().item()


def train_autoencoder(setup: AESetup, train_data: ImageData, test_x: torch.Tensor, run: Run,
                      opts: LoopOptions, *, recon_every: int = 1, n_recon: int = 10) -> dict:
    """Train for opts.epochs total epochs (continuing opts.state); then encode the training set
    into the latent cache and measure the latents. Returns the latent statistics."""
    progress, _ = resume_point(setup.modules, opts.state)
    log = open_log(run, progress, opts.config)
    epochs, batch_size, deadline, data = opts.epochs, opts.batch_size, opts.deadline, opts.data
    train_data = train_data.to(setup.device)
    stats = None

    def save() -> None:
        save_checkpoint(autoencoder_checkpoint(setup, progress, data, opts.config, stats),
                        run.checkpoint)

    with stop_guard(run, progress, save):
        for epoch in (bar := epoch_range(run, progress.epoch, epochs)):
            meter, started = LossMeter(), time.perf_counter()
            kl_w = setup.kl_weight(progress.step)
            adv_w = setup.loss.adv_weight * setup.adv_ramp(progress.step)
            for x, _ in epoch_batches(train_data, batch_size, setup.device, False, epoch, epochs,
                                      deadline):
                losses = ae_step(setup, x, progress.step)
                meter.update(progress.advance(x), losses)
            speed = meter.count * batch_size / (time.perf_counter() - started)
            record = {"epoch": epoch, "step": progress.step,
                      **evaluate(setup, meter, test_x), "kl_weight": kl_w, "adv_weight": adv_w,
                      "lr_ae": setup.sched_ae.get_last_lr()[0], "img_per_s": speed}
            records = [*log.read(), record]
            write_figures(run, setup.inference_ae, records, test_x[:n_recon],
                          epoch % recon_every == 0 or epoch == epochs)
            if end_epoch(run, log, bar, progress, record, started=started, epochs=epochs,
                         checkpoint_every=opts.checkpoint_every, deadline=deadline, save=save,
                         schedulers=[setup.sched_ae, setup.sched_d], epoch_steps=meter.count):
                break
        stats = measure_latents(setup.inference_ae, train_data, run, data.seed, opts.config)
        save()
    return stats


def evaluate(setup: AESetup, meter: LossMeter, test_x: torch.Tensor) -> dict:
    """Mean training terms (the adaptive KL weight is updated from them once per epoch, as in
    the beta-VAE) and the held-out reconstruction error of the inference autoencoder."""
    train = meter.means()
    if setup.beta is not None:
        setup.beta.update(train["kl"], train["rec"])
    mse = held_out_mse(setup.inference_ae, test_x)
    setup.ae.train()
    return {**{f"train_{k}": v for k, v in train.items()}, "test_mse": mse,
            "test_psnr": psnr(mse)}


def write_figures(run: Run, ae: Autoencoder, records: list[dict], x: torch.Tensor,
                  reconstructions: bool) -> None:
    """The loss curves and, when asked, held-out originals over their reconstructions."""
    save_curves(records, LOSS_PANELS, run.plots / "losses.png", log_y=["reconstruction"],
                title=f"VAE-GAN autoencoder {run.name}")
    if reconstructions:
        rows = torch.stack([x, reconstruct(ae, x)])
        save_labelled_grid(rows, run.plots / "reconstructions.png",
                           ["original", "reconstruction"], title=f"{run.name}, epoch "
                           f"{records[-1]['epoch']}: held-out PSNR "
                           f"{records[-1]['test_psnr']:.1f} dB")
        ae.train()


def measure_latents(ae: Autoencoder, train_data: ImageData, run: Run, seed: int,
                    config: dict) -> dict:
    """Encode the training set into the latent cache, measure the latents' statistics and scale
    factor, and draw the scaled latents' histogram."""
    cache = encode_dataset(ae, train_data)
    stats = latent_statistics(cache, seed)
    save_cache({**cache, "class_names": train_data.class_names}, run, config)
    write_json(run.plots / "latent_stats.json", stats)
    generator = torch.Generator().manual_seed(seed)
    mean, logvar = cache["mean"][:4000], cache["logvar"][:4000]
    scaled = stats["scale_factor"] * reparameterize(mean, logvar, generator)
    save_latent_histogram(scaled, run.plots / "latent_histogram.png", title=f"{run.name}: "
                          f"scaled posterior samples s * z, s = {stats['scale_factor']:.3f}")
    return stats


def autoencoder_checkpoint(setup: AESetup, progress: Progress, data: DataSpec, config: dict,
                           latent_stats: dict | None = None) -> dict:
    """The LDM autoencoder checkpoint: version, kind "ldm_autoencoder", model_args
    {"autoencoder", "discriminator"}, data (DataSpec), epoch, step, rng, config (the run's
    constants), the state_dicts of ae, disc, opt_ae, opt_d, sched_ae, sched_d, beta_scheduler
    (KL mode adaptive) and ema (with EMA_DECAY), and once training has ended latent_stats
    (per-channel and overall mean and std of posterior samples, scale_factor = 1 / std)."""
    state = checkpoint_frame("ldm_autoencoder", setup.model_args, data, progress, config,
                             setup.modules)
    if latent_stats is not None:
        state["latent_stats"] = latent_stats
    return state


LOSS_PANELS = [("reconstruction", ["train_rec"]), ("KL (summed over the latent)", ["train_kl"]),
               ("adversarial and feature matching", ["train_adv", "train_fm"]),
               ("discriminator", ["train_d_loss", "train_d_real", "train_d_recon"]),
               ("held-out PSNR (dB)", ["test_psnr"]),
               ("weights", ["kl_weight", "adv_weight", "train_adv_ratio"])]
