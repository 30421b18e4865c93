"""Latent diffusion stage 2: a class-conditional v-prediction UNet on the cached, scaled latents of
a finished LDMAutoencoderMain run, with label dropout for classifier-free guidance.

    python -m LDM_run_scripts.LDMDiffusionMain
    python -m LDM_run_scripts.LDMDiffusionMain --AUTOENCODER_RUN=001 --EPOCHS=20 --GUIDANCE=2
    python -m LDM_run_scripts.LDMDiffusionMain --RESUME=latest --EPOCHS=30

Writes to saved_plots/ldm/<run>/: progression.png (one decoded sample per class, CFG at GUIDANCE,
DDIM, from fixed noise, across epochs), losses.png (log scale, per quarter of t), config.json,
metrics.jsonl; weights to saved_models/ldm/<run>/. Never runs the encoder: it reads the cache.
"""
import torch

from models.diffusion import PREDICTION_TYPES, NoiseSchedule
from models.unet import UNet
from train.common import time_budget
from train.diffusion import build_diffusion, train_diffusion
from train.latents import (class_samples, guided_denoiser, latent_batches, load_autoencoder,
                           load_cache)
from utils.config import check_choice, check_positive, resolve_constants
from utils.errors import UserError, run_cli
from utils.data import load_dataset
from utils.runs import find_run
from utils.session import open_run, resume, start

# autoencoder
AUTOENCODER_RUN = "latest"  # the stage-1 run (name or number) whose latents are modelled
DATA_ROOT = "data"  # where torchvision datasets are downloaded (for held-out images)

# diffusion
SCHEDULE = "cosine"  # linear or cosine
TIMESTEPS = 1000  # T
PREDICTION = "v"  # v (Salimans & Ho 2022), epsilon or x0
MIN_SNR_GAMMA = 0.0  # min-SNR loss weighting gamma; 0 turns it off
LABEL_DROPOUT = 0.1  # share of labels replaced by the null class (CFG training)

# model
BASE = 64  # UNet channels at the latent resolution
CHANNEL_MULT = (1, 2)  # channel multiplier per level
BLOCKS = 2  # residual blocks per level
ATTENTION = (4,)  # latent resolutions with self-attention
HEADS = 4  # attention heads
DROPOUT = 0.0  # dropout inside residual blocks

# training
EPOCHS = 10  # passes over the cached latents
BATCH_SIZE = 128  # latents per step
LR = 5e-4  # AdamW peak learning rate
LR_SCHEDULE = "cosine"  # after warm-up: constant or cosine
WARMUP_STEPS = 200  # linear LR warm-up steps
EMA_DECAY = 0.995  # EMA of the weights (with a warm-up), used for samples
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
GUIDANCE = 3.0  # CFG scale of the per-epoch samples
SAMPLE_STEPS = 50  # DDIM steps of the per-epoch samples


def main(argv=None):
    """Train (or resume) stage 2; returns the run."""
    c = resolve_constants(globals(), argv)
    run, state, c = resume(c, "ldm", argv,
                           output_constants=("GUIDANCE", "SAMPLE_STEPS"))
    check_choice("SCHEDULE", c.SCHEDULE, ("linear", "cosine"))
    check_choice("PREDICTION", c.PREDICTION, PREDICTION_TYPES)
    check_choice("LR_SCHEDULE", c.LR_SCHEDULE, ("constant", "cosine"))
    check_positive(c, "BATCH_SIZE", "LR", "BASE", "TIMESTEPS", "SAMPLE_STEPS", "WARMUP_STEPS",
                   "CHECKPOINT_EVERY")
    if not 0 <= c.LABEL_DROPOUT < 1:
        raise UserError(f"LABEL_DROPOUT must be in [0, 1), got {c.LABEL_DROPOUT}")
    device, amp_dtype = start(c)
    ae_run = find_run(c.SAVE_ROOT, "ldm_autoencoder", c.AUTOENCODER_RUN)
    c.AUTOENCODER_RUN = ae_run.name  # a resumed run keeps using this exact autoencoder
    ae, ae_state = load_autoencoder(ae_run, device)
    cache = load_cache(ae_run)
    scale = ae_state["latent_stats"]["scale_factor"]
    ae_config = ae_state["config"]
    c.DATASET = ae_config["DATASET"]
    num_classes = int(cache["labels"].max()) + 1
    latent_shape = tuple(cache["mean"].shape[1:])
    print(f"autoencoder {ae_run.name}: {len(cache['labels'])} cached latents of shape "
          f"{latent_shape}, scale factor {scale:.4f}, {num_classes} classes")
    model_args = dict(in_channels=latent_shape[0], image_size=latent_shape[-1], base=c.BASE,
                      channel_mult=tuple(c.CHANNEL_MULT), blocks=c.BLOCKS,
                      attention_resolutions=tuple(c.ATTENTION), heads=c.HEADS,
                      dropout=c.DROPOUT, num_classes=num_classes)
    schedule = NoiseSchedule(c.SCHEDULE, c.TIMESTEPS)
    total_steps = c.EPOCHS * max(1, len(cache["labels"]) // c.BATCH_SIZE)
    s = build_diffusion(UNet(**model_args), schedule, device, lr=c.LR,
                        warmup_steps=c.WARMUP_STEPS, total_steps=total_steps,
                        lr_schedule=c.LR_SCHEDULE, ema_decay=c.EMA_DECAY, amp_dtype=amp_dtype,
                        prediction_type=c.PREDICTION, min_snr_gamma=c.MIN_SNR_GAMMA or None,
                        label_dropout=c.LABEL_DROPOUT)
    run = open_run(c, "ldm", f"{c.PREDICTION}-cfg", run)
    noise = state["fixed_noise"] if state else torch.randn(num_classes, *latent_shape)
    noise, labels = noise.to(device), torch.arange(num_classes, device=device)
    test = load_dataset(c.DATASET, "test", image_size=ae_config["IMAGE_SIZE"],
                        channels=ae_state["model_args"]["channels"], root=c.DATA_ROOT,
                        seed=ae_config["SEED"], n=512)
    with torch.no_grad():  # encoded once, for the held-out loss
        held_out = scale * ae.encode(test.first(512)[0].to(device))[0].float()
    with time_budget(c.MINUTES):
        train_diffusion(
            s, lambda epoch: latent_batches(cache, scale, c.BATCH_SIZE, device, epoch, c.EPOCHS),
            held_out, run, epochs=c.EPOCHS, batch_size=c.BATCH_SIZE,
            snapshot=lambda: class_samples(guided_denoiser(s, c.GUIDANCE), ae, scale, noise,
                                           labels, c.SAMPLE_STEPS),
            config=vars(c), checkpoint_every=c.CHECKPOINT_EVERY, state=state, model_args=model_args,
            fixed_noise=noise.cpu(), scale_factor=scale,
            sample_title=f"one sample per class (rows), CFG {c.GUIDANCE}, DDIM {c.SAMPLE_STEPS}",
            row_labels=tuple(cache.get("class_names", ())))
    print(f"done: figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
