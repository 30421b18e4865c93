"""Train a pixel-space diffusion model with a UNet (or DiT) denoiser: by default rectified flow
(Liu et al. 2023; chosen by the recipe study, docs/studies/diffusion.md); DDPM's epsilon (Ho et
al. 2020), v or x0 prediction on a linear or cosine noise schedule with --PREDICTION.

    python -m Diffusion_run_scripts.DiffusionMain
    python -m Diffusion_run_scripts.DiffusionMain --PREDICTION=v --MIN_SNR_GAMMA=5 --EPOCHS=5
    python -m Diffusion_run_scripts.DiffusionMain --RESUME=latest --EPOCHS=10

Writes to saved_plots/diffusion/<run>/: progression.png (EMA samples from fixed noise, one column
per epoch), losses.png (log scale, with the loss per quarter of the timestep range),
forward_diffusion.png, config.json, metrics.jsonl; weights to saved_models/diffusion/<run>/
(with the EMA weights of epoch GUIDE_EPOCH, the guide DiffusionEval's autoguidance samples with).
"""
import torch

from models.diffusion import NoiseSchedule, q_sample
from train.options import Deadline
from train.diffusion import train_diffusion
from train.diffusion_step import build_diffusion, ema_samples
from train.inference import build_schedule
from train.options import LoopOptions
from utils.config import check_betas, check_choice, check_positive, resolve_constants
from utils.data import batches_per_epoch, iterate_batches
from utils.cli import run_cli
from utils.errors import UserError
from utils.plots import save_labelled_grid
from utils.run_index import write_indexes
from utils.session import denoiser_args, load_splits, open_run, resume_run, seed_and_device

# data
DATASET = "shapes"  # shapes, digits (embedded); cifar10, mnist, ... (online)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
IMAGE_SIZE = 32  # pixels
CHANNELS = None  # 1 (grey) or 3 (RGB); None: the data's own (a folder: grey if all are)
N_TRAIN = None  # cap on training images (None: the whole split)
FLIP = False  # random horizontal flips

# diffusion
SCHEDULE = "cosine"  # linear (Ho et al. 2020) or cosine (Nichol & Dhariwal 2021)
TIMESTEPS = 1000  # T, the number of noise steps
PREDICTION = "flow"  # what the UNet predicts: flow (rectified flow), v, epsilon or x0
MIN_SNR_GAMMA = 0.0  # min-SNR loss weighting gamma (Hang et al. 2023); 0 turns it off
LOGIT_MEAN = 0.0  # flow: training times t = sigmoid(N(LOGIT_MEAN, LOGIT_STD^2)) (Esser 2024)
LOGIT_STD = 1.0  # flow: spread of the logit-normal training times

# model
BACKBONE = "unet"  # unet, or dit (a Diffusion Transformer, Peebles & Xie 2023)
BASE = 24  # UNet channels at full resolution, times CHANNEL_MULT (docs/studies/compare.md)
UNET_PATCH = 1  # unet: pixel blocks folded into channels first (2: it runs at half size)
CHANNEL_MULT = (1, 2, 2)  # channel multiplier per resolution level
BLOCKS = 1  # residual blocks per level
ATTENTION = (8,)  # resolutions with self-attention
HEADS = 4  # attention heads
DROPOUT = 0.0  # dropout inside residual blocks
PATCH = 2  # dit: patch size (pixels or latent cells per side)
DIT_WIDTH = 192  # dit: token width
DIT_DEPTH = 6  # dit: transformer blocks
DIT_HEADS = 6  # dit: attention heads
POS_EMBED = "sincos"  # dit: position embedding, sincos (fixed) or learned

# training
EPOCHS = 4  # passes over the training set
BATCH_SIZE = 32  # images per step, over all processes (docs/studies/compare.md)
LR = 1e-3  # AdamW peak learning rate, after WARMUP_STEPS (docs/studies/diffusion.md)
LR_SCHEDULE = "constant"  # after warm-up: constant or cosine
WARMUP_STEPS = 200  # linear LR warm-up steps
BETAS = (0.9, 0.999)  # AdamW betas (Loshchilov & Hutter 2019; torch's defaults)
EMA_DECAY = 0.995  # EMA of the weights (with a warm-up), used for samples
GUIDE_EPOCH = 2  # keep this epoch's EMA as the autoguidance guide (DiffusionEval); 0: none
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/ (needs the tensorboard package)
SAMPLER = "ddim"  # per-epoch samples: ddim, ddpm, heun, dpmpp2m (flow: all but ddpm)
SAMPLE_STEPS = 50  # its number of steps
PROGRESSION_ROWS = 8  # fixed noise images followed across epochs


def main(argv=None):
    """Train (or resume) a run; returns it."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "diffusion", argv,
                               output_constants=("SAMPLER", "SAMPLE_STEPS"),
                               older_defaults={"UNET_PATCH": 1, "GUIDE_EPOCH": 0})  # older runs
    check_choice("LR_SCHEDULE", const.LR_SCHEDULE, ("constant", "cosine"))
    check_betas(const)
    check_positive(const, "BATCH_SIZE", "LR", "BASE", "TIMESTEPS", "SAMPLE_STEPS", "WARMUP_STEPS",
                   "CHECKPOINT_EVERY", "PROGRESSION_ROWS")
    if not isinstance(const.GUIDE_EPOCH, int) or const.GUIDE_EPOCH < 0:
        raise UserError(f"GUIDE_EPOCH must be an epoch number (0: no guide), got "
                        f"{const.GUIDE_EPOCH!r}")
    schedule = build_schedule(const.PREDICTION, const.SCHEDULE, const.TIMESTEPS,
                              const.LOGIT_MEAN, const.LOGIT_STD, sampler=const.SAMPLER,
                              min_snr_gamma=const.MIN_SNR_GAMMA)
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    data, train, test = load_splits(const)
    model_args = denoiser_args(const, data.channels, const.IMAGE_SIZE)
    steps_per_epoch = batches_per_epoch(train, const.BATCH_SIZE)
    setup = build_diffusion(model_args, schedule, device, lr=const.LR,
                            warmup_steps=const.WARMUP_STEPS,
                            total_steps=const.EPOCHS * max(1, steps_per_epoch),
                            lr_schedule=const.LR_SCHEDULE, betas=const.BETAS,
                            ema_decay=const.EMA_DECAY,
                            amp_dtype=amp_dtype, prediction_type=const.PREDICTION,
                            min_snr_gamma=const.MIN_SNR_GAMMA or None)
    tag = "flow" if const.PREDICTION == "flow" else f"{const.SCHEDULE}-{const.PREDICTION}"
    run = open_run(const, "diffusion", tag, resumed=run)
    if state is None:
        write_forward_strip(schedule, train.first(4)[0], run.plots / "forward_diffusion.png")
    noise = (state["fixed_noise"] if state else torch.randn(const.PROGRESSION_ROWS, *train.shape))
    noise, train = noise.to(device), train.to(device)
    train_diffusion(
        setup, lambda epoch: iterate_batches(train, const.BATCH_SIZE, device, flip=const.FLIP,
                                             shard=True),
        steps_per_epoch, test.first(512)[0], run, LoopOptions.of(const, data, state, deadline),
        kind="diffusion", fixed_noise=noise,
        snapshot=lambda: ema_samples(setup, noise, const.SAMPLER, const.SAMPLE_STEPS),
        sample_title=f"EMA samples from fixed noise ({const.SAMPLER}, {const.SAMPLE_STEPS} steps)",
        guide_epoch=const.GUIDE_EPOCH)
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"done: figures in {run.plots}")
    return run


def write_forward_strip(schedule: NoiseSchedule, x0: torch.Tensor, path, columns: int = 10):
    """x0 noised to evenly spaced t with q_sample: one row per image."""
    ts = torch.linspace(0, schedule.timesteps - 1, columns).round().long()
    noise = torch.randn_like(x0)
    rows = torch.stack([q_sample(schedule, x0, int(t), noise) for t in ts], dim=1)
    save_labelled_grid(rows, path, col_labels=[f"t={int(t)}" for t in ts],
                       title=f"Forward diffusion q(x_t | x0), {schedule.kind} schedule")


if __name__ == "__main__":
    run_cli(main)
