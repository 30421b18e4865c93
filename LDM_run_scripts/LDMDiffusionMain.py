"""Latent diffusion stage 2: a class-conditional UNet (rectified flow by default, chosen by the
recipe study; v, epsilon or x0 with --PREDICTION) on the cached, scaled latents of a finished
LDMAutoencoderMain run, with label dropout for classifier-free guidance.

    python -m LDM_run_scripts.LDMDiffusionMain
    python -m LDM_run_scripts.LDMDiffusionMain --AUTOENCODER_RUN=001 --EPOCHS=20 --GUIDANCE=3
    python -m LDM_run_scripts.LDMDiffusionMain --RESUME=latest --EPOCHS=30

Writes to saved_plots/ldm/<run>/: progression.png (one decoded sample per class, CFG at GUIDANCE,
DDIM, from fixed noise, across epochs), losses.png (log scale, per quarter of t), config.json,
metrics.jsonl; weights to saved_models/ldm/<run>/. Never runs the encoder: it reads the cache.
"""
import torch

from train.options import Deadline
from train.diffusion import train_diffusion
from train.diffusion_step import build_diffusion, ema_denoiser
from train.inference import build_schedule
from train.latents import (class_samples, finished_stage1, guided, held_out_latents,
                           latent_batches)
from train.options import LoopOptions
from utils.config import check_betas, check_choice, check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.session import denoiser_args, open_run, resume_run, seed_and_device

# autoencoder
AUTOENCODER_RUN = "latest"  # the stage-1 run (name or number) whose latents are modelled
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"

# diffusion
SCHEDULE = "cosine"  # linear or cosine
TIMESTEPS = 1000  # T, the number of noise steps
PREDICTION = "flow"  # flow (rectified flow), v (Salimans & Ho 2022), epsilon or x0
MIN_SNR_GAMMA = 0.0  # min-SNR loss weighting gamma; 0 turns it off
LOGIT_MEAN = 0.0  # flow: training times t = sigmoid(N(LOGIT_MEAN, LOGIT_STD^2)) (Esser 2024)
LOGIT_STD = 1.0  # flow: spread of the logit-normal training times
LABEL_DROPOUT = 0.1  # share of labels replaced by the null class (CFG training)

# model
BACKBONE = "unet"  # unet, or dit (a Diffusion Transformer, Peebles & Xie 2023)
BASE = 64  # UNet channels at the latent resolution
UNET_PATCH = 1  # unet: latent-cell blocks folded into channels first (2: half size)
CHANNEL_MULT = (1, 2)  # channel multiplier per level
BLOCKS = 2  # residual blocks per level
ATTENTION = (4,)  # latent resolutions with self-attention
HEADS = 4  # attention heads
DROPOUT = 0.0  # dropout inside residual blocks
PATCH = 2  # dit: patch size (pixels or latent cells per side)
DIT_WIDTH = 192  # dit: token width
DIT_DEPTH = 6  # dit: transformer blocks
DIT_HEADS = 6  # dit: attention heads
POS_EMBED = "sincos"  # dit: position embedding, sincos (fixed) or learned

# training
EPOCHS = 20  # passes over the cached latents (docs/studies/diffusion.md, latent diffusion)
BATCH_SIZE = 128  # latents per step
LR = 5e-4  # AdamW peak learning rate
LR_SCHEDULE = "cosine"  # after warm-up: constant or cosine
WARMUP_STEPS = 200  # linear LR warm-up steps
BETAS = (0.9, 0.999)  # AdamW betas (Loshchilov & Hutter 2019; torch's defaults)
EMA_DECAY = 0.995  # EMA of the weights (with a warm-up), used for samples
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
GUIDANCE = 2.0  # CFG scale of the per-epoch samples (as LDMEval's)
SAMPLE_STEPS = 50  # DDIM steps of the per-epoch samples


def main(argv=None):
    """Train (or resume) stage 2; returns the run."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "ldm", argv,
                                   output_constants=("GUIDANCE", "SAMPLE_STEPS"),
                                   older_defaults={"UNET_PATCH": 1})  # runs from before it
    check_choice("LR_SCHEDULE", const.LR_SCHEDULE, ("constant", "cosine"))
    check_betas(const)
    check_positive(const, "BATCH_SIZE", "LR", "BASE", "TIMESTEPS", "SAMPLE_STEPS", "WARMUP_STEPS",
                   "CHECKPOINT_EVERY")
    if not 0 <= const.LABEL_DROPOUT < 1:
        raise UserError(f"LABEL_DROPOUT must be in [0, 1), got {const.LABEL_DROPOUT}")
    schedule = build_schedule(const.PREDICTION, const.SCHEDULE, const.TIMESTEPS,
                              const.LOGIT_MEAN, const.LOGIT_STD, min_snr_gamma=const.MIN_SNR_GAMMA)
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    stage1, cache = finished_stage1(const.SAVE_ROOT, const.AUTOENCODER_RUN, device)
    const.AUTOENCODER_RUN = stage1.run.name  # a resumed run keeps using this exact autoencoder
    ae, scale = stage1.nets["autoencoder"], stage1.state["latent_stats"]["scale_factor"]
    num_classes = int(cache["labels"].max()) + 1
    latent_shape = tuple(cache["mean"].shape[1:])
    model_args = denoiser_args(const, latent_shape[0], latent_shape[-1], num_classes)
    steps_per_epoch = max(1, len(cache["labels"]) // const.BATCH_SIZE)
    setup = build_diffusion(model_args, schedule, device,
                            lr=const.LR, warmup_steps=const.WARMUP_STEPS,
                            total_steps=const.EPOCHS * steps_per_epoch,
                            lr_schedule=const.LR_SCHEDULE, betas=const.BETAS,
                            ema_decay=const.EMA_DECAY, amp_dtype=amp_dtype,
                            prediction_type=const.PREDICTION,
                            min_snr_gamma=const.MIN_SNR_GAMMA or None,
                            label_dropout=const.LABEL_DROPOUT)
    run = open_run(const, "ldm", f"{const.PREDICTION}-cfg", run, dataset=stage1.data.dataset)
    noise = state["fixed_noise"] if state else torch.randn(num_classes, *latent_shape)
    noise, labels = noise.to(device), torch.arange(num_classes, device=device)

    def snapshot() -> torch.Tensor:
        denoiser = guided(ema_denoiser(setup, clip_x0=False), setup.model, const.GUIDANCE)
        return class_samples(denoiser, ae, scale, noise, labels, const.SAMPLE_STEPS)

    train_diffusion(
        setup, lambda epoch: latent_batches(cache, scale, const.BATCH_SIZE, device),
        steps_per_epoch, held_out_latents(stage1, const.DATA_ROOT), run,
        LoopOptions.of(const, stage1.data, state, deadline), kind="ldm", snapshot=snapshot,
        fixed_noise=noise, sample_title=(f"one sample per class (rows), CFG {const.GUIDANCE}, "
                      f"DDIM {const.SAMPLE_STEPS}"),
        row_labels=tuple(cache.get("class_names", ())),
        extras={"autoencoder_run": stage1.run.name, "scale_factor": scale})
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"done: figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
