"""Latent diffusion stage 1: train the KL autoencoder as a VAE-GAN (Esser et al. 2021; Rombach
et al. 2022), then measure its latents and cache the encoded training set for stage 2.

    python -m LDM_run_scripts.LDMAutoencoderMain
    python -m LDM_run_scripts.LDMAutoencoderMain --KL_MODE=adaptive --EPOCHS=8
    python -m LDM_run_scripts.LDMAutoencoderMain --RESUME=latest --EPOCHS=10

Writes to saved_plots/ldm_autoencoder/<run>/: reconstructions.png (every RECON_EVERY epochs:
held-out originals over reconstructions), losses.png (every loss term, D outputs, PSNR, weights),
latent_histogram.png (scaled latents per channel against N(0, 1)), latent_stats.json,
config.json, metrics.jsonl; weights and latent_cache.pt to saved_models/ldm_autoencoder/<run>/.
"""
import json

import torch

from train.common import time_budget
from train.autoencoder import (KL_MODES, AELoss, build_autoencoder, encode_dataset,
                               latent_statistics, reconstruct, train_autoencoder)
from train.latents import save_cache
from utils.config import check_choice, check_positive, resolve_constants
from utils.errors import UserError, run_cli
from utils.plots import save_curves, save_labelled_grid, save_latent_histogram
from utils.runs import load_checkpoint, save_checkpoint
from utils.session import datasets, open_run, resume, start

# data
DATASET = "shapes"  # shapes, digits (embedded); cifar10, mnist, ... (online)
DATA_ROOT = "data"  # where torchvision datasets are downloaded
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)

# model
LATENT_CHANNELS = 4  # latent channels
BASE = 16  # autoencoder channels at full resolution
CHANNEL_MULT = (1, 2, 4)  # per level; f = 2^(levels - 1) = 4: 32x32 -> 8x8 latents
BLOCKS = 1  # residual blocks per level
ATTENTION = True  # self-attention at the lowest resolution
DISC_WIDTH = 32  # patch discriminator channels in its first layer
DISC_LAYERS = 3  # its strided conv layers
SPECTRAL_NORM = False  # spectral norm on the discriminator's convolutions

# loss
RECONSTRUCTION = "l1"  # l1 or mse, mean per pixel
KL_MODE = "warmup"  # fixed, warmup (linear ramp) or adaptive (the beta-VAE's scheduler)
KL_WEIGHT = 1e-5  # on the KL summed over the latent grid
KL_WARMUP_STEPS = 500  # KL ramp length (KL_MODE="warmup")
ADV_WEIGHT = 0.5  # adversarial weight (Rombach et al.'s disc_weight)
ADV_START = 400  # step where the adversarial and feature-matching terms start
ADV_WARMUP_STEPS = 200  # their linear ramp
ADAPTIVE_ADV = True  # scale by ||grad rec|| / ||grad adv|| at the decoder's last layer
ADV_MAX = 1e4  # clamp on that ratio
FM_WEIGHT = 1.0  # feature matching weight
DISC_LOSS = "hinge"  # hinge or bce

# training
EPOCHS = 3  # passes over the training set
BATCH_SIZE = 64  # images per step
LR, LR_MIN = 8e-4, 1e-7  # autoencoder Adam lr, cosine-annealed to LR_MIN
DISC_LR, DISC_LR_MIN = 2.4e-3, 1e-6  # discriminator lr, cosine-annealed
EMA_DECAY = 0.0  # EMA of the autoencoder weights (0: off)
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
RECON_EVERY = 1  # epochs between reconstruction figures
N_RECON = 10  # held-out images in the reconstruction figure


def main(argv=None):
    """Train (or resume) stage 1; returns the run."""
    c = resolve_constants(globals(), argv)
    run, state, c = resume(c, "ldm_autoencoder", argv,
                           output_constants=("RECON_EVERY", "N_RECON"))
    check_choice("KL_MODE", c.KL_MODE, KL_MODES)
    check_choice("RECONSTRUCTION", c.RECONSTRUCTION, ("l1", "mse"))
    check_choice("DISC_LOSS", c.DISC_LOSS, ("hinge", "bce"))
    check_positive(c, "BATCH_SIZE", "LR", "DISC_LR", "BASE", "LATENT_CHANNELS", "RECON_EVERY",
                   "CHECKPOINT_EVERY", "N_RECON")
    device, amp_dtype = start(c)
    train, test = datasets(c)
    model_args = dict(image_size=c.IMAGE_SIZE, channels=train.shape[0],
                      latent_channels=c.LATENT_CHANNELS, base=c.BASE,
                      channel_mult=tuple(c.CHANNEL_MULT), blocks=c.BLOCKS, attention=c.ATTENTION)
    loss = AELoss(c.RECONSTRUCTION, c.KL_WEIGHT, c.KL_MODE, c.KL_WARMUP_STEPS, c.ADV_WEIGHT,
                  c.ADV_START, c.ADV_WARMUP_STEPS, c.ADAPTIVE_ADV, c.ADV_MAX, c.FM_WEIGHT,
                  c.DISC_LOSS)
    try:
        s = build_autoencoder(model_args, dict(channels=train.shape[0], width=c.DISC_WIDTH,
                                               layers=c.DISC_LAYERS,
                                               spectral_norm=c.SPECTRAL_NORM), device,
                              lr=(c.LR, c.DISC_LR), lr_min=(c.LR_MIN, c.DISC_LR_MIN),
                              total_steps=c.EPOCHS * max(1, len(train) // c.BATCH_SIZE),
                              loss=loss, ema_decay=c.EMA_DECAY, amp_dtype=amp_dtype)
    except ValueError as err:  # e.g. IMAGE_SIZE not divisible by f
        raise UserError(str(err)) from None
    run = open_run(c, "ldm_autoencoder", f"z{c.LATENT_CHANNELS}", run)
    test_x = test.first(512)[0]

    def on_epoch(epoch: int, records: list[dict]) -> None:
        save_curves(records, LOSS_PANELS, run.plots / "losses.png", log_y=["reconstruction"],
                    title=f"VAE-GAN autoencoder {run.name}")
        if epoch % c.RECON_EVERY == 0 or epoch == c.EPOCHS:
            x = test_x[:c.N_RECON]
            rows = torch.stack([x, reconstruct(s.inference_ae, x)])
            save_labelled_grid(rows, run.plots / "reconstructions.png",
                               ["original", "reconstruction"], title=f"{run.name}, epoch "
                               f"{epoch}: held-out PSNR {records[-1]['test_psnr']:.1f} dB")

    with time_budget(c.MINUTES):
        train_autoencoder(s, train, test_x, run, epochs=c.EPOCHS, batch_size=c.BATCH_SIZE,
                          config=vars(c), on_epoch=on_epoch, checkpoint_every=c.CHECKPOINT_EVERY,
                          state=state, model_args=model_args)
    cache = encode_dataset(s.inference_ae, train)
    stats = latent_statistics(cache, c.SEED)
    save_cache({**cache, "class_names": train.class_names}, run, vars(c))
    final = load_checkpoint(run.checkpoint)
    final.update(latent_stats=stats, ae_final=s.inference_ae.state_dict())
    save_checkpoint(final, run.checkpoint)
    (run.plots / "latent_stats.json").write_text(json.dumps(stats, indent=2))
    mean, logvar = cache["mean"][:4000], cache["logvar"][:4000]
    scaled = stats["scale_factor"] * (mean + (0.5 * logvar).exp() * torch.randn_like(mean))
    save_latent_histogram(scaled, run.plots / "latent_histogram.png", title=f"{run.name}: "
                          f"scaled posterior samples s * z, s = {stats['scale_factor']:.3f}")
    print(f"latents: mean {stats['mean']:.3f}, std {stats['std']:.3f}, scale factor "
          f"{stats['scale_factor']:.4f}; done: figures in {run.plots}")
    return run


LOSS_PANELS = [("reconstruction", ["train_rec"]), ("KL (summed over the latent)", ["train_kl"]),
               ("adversarial and feature matching", ["train_adv", "train_fm"]),
               ("discriminator", ["train_d_loss", "train_d_real", "train_d_recon"]),
               ("held-out PSNR (dB)", ["test_psnr"]),
               ("weights", ["kl_weight", "adv_weight", "train_adv_ratio"])]


if __name__ == "__main__":
    run_cli(main)
