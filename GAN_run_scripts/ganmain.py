"""Train a DCGAN (Radford et al. 2015).

    python -m GAN_run_scripts.ganmain                  # shapes, 32x32: ~13 min on 2 cores, fp32
    python -m GAN_run_scripts.ganmain --DATASET=digits --EPOCHS=40
    python -m GAN_run_scripts.ganmain --RESUME=latest --EPOCHS=20   # continue a run

Writes to saved_plots/gan/<run>/: progression.png (fixed latents across epochs), losses.png,
samples.png, config.json, metrics.jsonl; weights to saved_models/gan/<run>/latest.pt.
"""
import torch

from models.gan import ADVERSARIAL_LOSSES, D_NORMS, UPSAMPLING
from train.options import Deadline
from train.gan import build_gan, train_gan
from train.inference import generate
from train.lr import LR_KINDS
from train.options import LoopOptions
from utils.config import check_betas, check_choice, check_positive, resolve_constants
from utils.data import batches_per_epoch
from utils.cli import run_cli
from utils.errors import UserError
from utils.plots import save_grid
from utils.run_index import write_indexes
from utils.session import load_splits, open_run, resume_run, seed_and_device

# data
DATASET = "shapes"  # shapes, digits (embedded); cifar10, mnist, fashionmnist, celeba, ... (online)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
IMAGE_SIZE = 32  # pixels; 4 * 2^k (16, 32, 64, ...)
CHANNELS = None  # 1 (grey) or 3 (RGB); None: the data's own (a folder: grey if all are)
N_TRAIN = None  # cap on training images (None: the whole split; shapes has 20,000)
FLIP = False  # random horizontal flips

# model
LATENT_DIM = 100  # size of z
WIDTH = 48  # channels of G's last layer, doubled per coarser level (DCGAN: 64; docs/studies/gan.md)
D_WIDTH_FACTOR = 0.5  # D's first-layer channels: WIDTH x this (1: DCGAN; 0.5: 1/4 the cost)
UPSAMPLE = "transposed"  # G's x2 steps: transposed (DCGAN) or nearest (+ 3x3 conv, Odena 2016)
LOSS = "bce"  # adversarial loss: bce (non-saturating, Goodfellow 2014) or hinge (Miyato 2018)
SPECTRAL_NORM = False  # spectral norm on D's convolutions, without BatchNorm (Miyato 2018)
D_NORM = "batch"  # normalisation in D's hidden layers: batch (DCGAN) or none
MBSTD_GROUP = 0  # minibatch-stddev channel in D over groups this size (Karras 2018); 0: off
R1_GAMMA = 0.0  # R1 penalty gamma / 2 E||grad D(x)||^2 on real images (Mescheder 2018); 0: off

# training
EPOCHS = 40  # passes over the training set (time on 2 cores: docs/results.md)
BATCH_SIZE = 64  # images per step
LR = 4e-4  # Adam rate of G (and of D unless LR_D is set); Radford et al.: 2e-4 (docs/studies)
LR_D = None  # D's own learning rate (two time scales, Heusel et al. 2017); None: LR
LR_SCHEDULE = "constant"  # both rates: constant, or cosine to 0 at the last step (or MINUTES)
BETAS = (0.5, 0.99)  # Adam betas (Radford et al. 2016: 0.5, 0.999; docs/studies/gan.md)
EMA_DECAY = 0.0  # EMA of G's weights for samples and eval (Yazici et al. 2019); 0: off
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto (CUDA if available), cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where the hardware is fast at it), bf16, fp32
CHANNELS_LAST = True  # NHWC memory layout: faster convolutions here in fp32 and bf16
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 2  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/ (needs the tensorboard package)
N_FIXED = 64  # fixed latents for the final sample grid
PROGRESSION_ROWS = 8  # how many of them the progression figure follows across epochs


def main(argv=None):
    """Train (or resume) a run; returns it."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "gan", argv, output_constants=("CHANNELS_LAST",),
                                   older_defaults={"D_WIDTH_FACTOR": 1.0})  # D was WIDTH wide
    check_positive(const, "BATCH_SIZE", "LR", "LATENT_DIM", "WIDTH", "CHECKPOINT_EVERY", "N_FIXED")
    check_choice("LOSS", const.LOSS, ADVERSARIAL_LOSSES)
    check_choice("UPSAMPLE", const.UPSAMPLE, UPSAMPLING)
    check_choice("D_NORM", const.D_NORM, D_NORMS)
    check_choice("LR_SCHEDULE", const.LR_SCHEDULE, LR_KINDS)
    if const.LR_D is not None:
        check_positive(const, "LR_D")
    check_positive(const, "D_WIDTH_FACTOR")
    check_betas(const)
    if const.MBSTD_GROUP < 0:
        raise UserError(f"MBSTD_GROUP must be >= 0 (0: off), got {const.MBSTD_GROUP}")
    if const.R1_GAMMA < 0:
        raise UserError(f"R1_GAMMA must be >= 0, got {const.R1_GAMMA}")
    if not 0 <= const.EMA_DECAY < 1:
        raise UserError(f"EMA_DECAY must be in [0, 1) (0: off), got {const.EMA_DECAY}")
    if const.IMAGE_SIZE < 8 or const.IMAGE_SIZE & (const.IMAGE_SIZE - 1):
        raise UserError(f"IMAGE_SIZE={const.IMAGE_SIZE}: a DCGAN needs a power of two >= 8")
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    data, train, test = load_splits(const)
    setup = build_gan(const.LATENT_DIM, const.IMAGE_SIZE, data.channels, const.WIDTH, const.LR,
                      const.BETAS, device, amp_dtype, const.CHANNELS_LAST, loss=const.LOSS,
                      spectral_norm=const.SPECTRAL_NORM, r1_gamma=const.R1_GAMMA,
                      ema_decay=const.EMA_DECAY, lr_d=const.LR_D, upsample=const.UPSAMPLE,
                      lr_schedule=const.LR_SCHEDULE, d_norm=const.D_NORM,
                      mbstd_group=const.MBSTD_GROUP,
                      d_width=max(1, round(const.WIDTH * const.D_WIDTH_FACTOR)),
                      total_steps=const.EPOCHS * batches_per_epoch(train, const.BATCH_SIZE))
    run = open_run(const, "gan", f"z{const.LATENT_DIM}", run)
    fixed_z = state["fixed_z"] if state else torch.randn(const.N_FIXED, const.LATENT_DIM)
    frames = train_gan(setup, train, test, run, LoopOptions.of(const, data, state, deadline),
                       fixed_z.to(device))
    save_grid(generate(setup.sampler, fixed_z.to(device), amp_dtype), run.plots / "samples.png",
              nrow=8, title=f"DCGAN samples after {len(frames)} epochs")
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"done: figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
