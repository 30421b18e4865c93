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
from train.autoencoder import KL_MODES, AELoss, build_autoencoder, train_autoencoder
from train.options import Deadline
from train.options import LoopOptions
from utils.config import check_choice, check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.session import load_splits, open_run, resume_run, seed_and_device

# data
DATASET = "shapes"  # shapes, digits (embedded); cifar10, mnist, ... (online)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
IMAGE_SIZE = 32  # pixels
CHANNELS = None  # 1 (grey) or 3 (RGB); None: the data's own (a folder: grey if all are)
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
EPOCHS = 12  # passes over the training set (docs/studies/diffusion.md, latent diffusion)
BATCH_SIZE = 64  # images per step
LR = 8e-4  # autoencoder Adam learning rate, cosine-annealed per step to LR_MIN
LR_MIN = 1e-7  # the autoencoder's final learning rate
DISC_LR = 2.4e-3  # discriminator Adam learning rate, cosine-annealed per step to DISC_LR_MIN
DISC_LR_MIN = 1e-6  # the discriminator's final learning rate
EMA_DECAY = 0.0  # EMA of the autoencoder weights (0: off)
RECIPE = None  # a named set of these constants, e.g. "gpu64" (docs/recipes.md); --NAME wins
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/ (needs the tensorboard package)
RECON_EVERY = 1  # epochs between reconstruction figures
N_RECON = 10  # held-out images in the reconstruction figure


def autoencoder_parts(const, channels: int) -> tuple[dict, dict, AELoss]:
    """The autoencoder's and the discriminator's model_args and the loss the constants choose."""
    model_args = dict(image_size=const.IMAGE_SIZE, channels=channels,
                      latent_channels=const.LATENT_CHANNELS, base=const.BASE,
                      channel_mult=tuple(const.CHANNEL_MULT), blocks=const.BLOCKS,
                      attention=const.ATTENTION)
    disc_args = dict(channels=channels, width=const.DISC_WIDTH, layers=const.DISC_LAYERS,
                     spectral_norm=const.SPECTRAL_NORM)
    loss = AELoss(const.RECONSTRUCTION, const.KL_WEIGHT, const.KL_MODE, const.KL_WARMUP_STEPS,
                  const.ADV_WEIGHT, const.ADV_START, const.ADV_WARMUP_STEPS, const.ADAPTIVE_ADV,
                  const.ADV_MAX, const.FM_WEIGHT, const.DISC_LOSS)
    return model_args, disc_args, loss


def main(argv=None):
    """Train (or resume) stage 1; returns the run."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "ldm_autoencoder", argv,
                               output_constants=("RECON_EVERY", "N_RECON"))
    check_choice("KL_MODE", const.KL_MODE, KL_MODES)
    check_choice("RECONSTRUCTION", const.RECONSTRUCTION, ("l1", "mse"))
    check_choice("DISC_LOSS", const.DISC_LOSS, ("hinge", "bce"))
    check_positive(const, "BATCH_SIZE", "LR", "DISC_LR", "BASE", "LATENT_CHANNELS", "RECON_EVERY",
                   "CHECKPOINT_EVERY", "N_RECON")
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    data, train, test = load_splits(const)
    model_args, disc_args, loss = autoencoder_parts(const, data.channels)
    try:
        setup = build_autoencoder(model_args, disc_args, device, lr=(const.LR, const.DISC_LR),
                                  lr_min=(const.LR_MIN, const.DISC_LR_MIN),
                                  total_steps=const.EPOCHS * max(1, len(train) // const.BATCH_SIZE),
                                  loss=loss, ema_decay=const.EMA_DECAY, amp_dtype=amp_dtype)
    except ValueError as err:  # e.g. IMAGE_SIZE not divisible by f
        raise UserError(str(err)) from None
    run = open_run(const, "ldm_autoencoder", f"z{const.LATENT_CHANNELS}", run)
    stats = train_autoencoder(setup, train, test.first(512)[0], run,
                              LoopOptions.of(const, data, state, deadline),
                              recon_every=const.RECON_EVERY, n_recon=const.N_RECON)
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"latents: mean {stats['mean']:.3f}, std {stats['std']:.3f}, scale factor "
          f"{stats['scale_factor']:.4f}; done: figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
