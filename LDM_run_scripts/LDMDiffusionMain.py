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
from train.checkpoints import load_run
from train.common import Deadline
from train.diffusion import build_diffusion, ema_denoiser, train_diffusion
from train.latents import class_samples, guided, latent_batches, load_cache
from utils.config import check_choice, check_positive, resolve_constants
from utils.errors import UserError, run_cli
from utils.session import open_run, resume_run, seed_and_device

# autoencoder
AUTOENCODER_RUN = "latest"  # the stage-1 run (name or number) whose latents are modelled
DATA_ROOT = "data"  # where torchvision datasets are downloaded (for held-out images)

# diffusion
SCHEDULE = "cosine"  # linear or cosine
TIMESTEPS = 1000  # T, the number of noise steps
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
    run, state, c = resume_run(c, "ldm", argv, output_constants=("GUIDANCE", "SAMPLE_STEPS"))
    check_choice("SCHEDULE", c.SCHEDULE, ("linear", "cosine"))
    check_choice("PREDICTION", c.PREDICTION, PREDICTION_TYPES)
    check_choice("LR_SCHEDULE", c.LR_SCHEDULE, ("constant", "cosine"))
    check_positive(c, "BATCH_SIZE", "LR", "BASE", "TIMESTEPS", "SAMPLE_STEPS", "WARMUP_STEPS",
                   "CHECKPOINT_EVERY")
    if not 0 <= c.LABEL_DROPOUT < 1:
        raise UserError(f"LABEL_DROPOUT must be in [0, 1), got {c.LABEL_DROPOUT}")
    deadline = Deadline(c.MINUTES)
    device, amp_dtype = seed_and_device(c)
    stage1 = load_run(c.SAVE_ROOT, "ldm_autoencoder", c.AUTOENCODER_RUN, device)
    if "latent_stats" not in stage1.state:
        raise UserError(f"{stage1.run.name} has not finished training (no latent statistics); "
                        f"finish or resume LDMAutoencoderMain first")
    c.AUTOENCODER_RUN = stage1.run.name  # a resumed run keeps using this exact autoencoder
    ae, cache = stage1.nets["autoencoder"], load_cache(stage1.run)
    scale = stage1.state["latent_stats"]["scale_factor"]
    num_classes = int(cache["labels"].max()) + 1
    latent_shape = tuple(cache["mean"].shape[1:])
    print(f"autoencoder {stage1.run.name}: {len(cache['labels'])} cached latents of shape "
          f"{latent_shape}, scale factor {scale:.4f}, {num_classes} classes")
    model_args = {"unet": dict(in_channels=latent_shape[0], image_size=latent_shape[-1],
                               base=c.BASE, channel_mult=tuple(c.CHANNEL_MULT), blocks=c.BLOCKS,
                               attention_resolutions=tuple(c.ATTENTION), heads=c.HEADS,
                               dropout=c.DROPOUT, num_classes=num_classes)}
    steps_per_epoch = max(1, len(cache["labels"]) // c.BATCH_SIZE)
    setup = build_diffusion(model_args, NoiseSchedule(c.SCHEDULE, c.TIMESTEPS), device,
                            lr=c.LR, warmup_steps=c.WARMUP_STEPS,
                            total_steps=c.EPOCHS * steps_per_epoch, lr_schedule=c.LR_SCHEDULE,
                            ema_decay=c.EMA_DECAY, amp_dtype=amp_dtype,
                            prediction_type=c.PREDICTION, min_snr_gamma=c.MIN_SNR_GAMMA or None,
                            label_dropout=c.LABEL_DROPOUT)
    run = open_run(c, "ldm", f"{c.PREDICTION}-cfg", run, dataset=stage1.data.dataset)
    noise = state["fixed_noise"] if state else torch.randn(num_classes, *latent_shape)
    noise, labels = noise.to(device), torch.arange(num_classes, device=device)
    with torch.no_grad():  # encoded once, for the held-out loss
        test_x = stage1.data.held_out(512, c.DATA_ROOT).first(512)[0].to(device)
        held_out = scale * ae.encode(test_x)[0].float()

    def snapshot() -> torch.Tensor:
        denoiser = guided(ema_denoiser(setup, clip_x0=False), setup.model, c.GUIDANCE)
        return class_samples(denoiser, ae, scale, noise, labels, c.SAMPLE_STEPS)

    train_diffusion(
        setup, lambda epoch: latent_batches(cache, scale, c.BATCH_SIZE, device),
        steps_per_epoch, held_out, run, kind="ldm", data=stage1.data, epochs=c.EPOCHS,
        batch_size=c.BATCH_SIZE, snapshot=snapshot, config=vars(c), fixed_noise=noise,
        deadline=deadline, checkpoint_every=c.CHECKPOINT_EVERY, state=state,
        sample_title=f"one sample per class (rows), CFG {c.GUIDANCE}, DDIM {c.SAMPLE_STEPS}",
        row_labels=tuple(cache.get("class_names", ())),
        extras={"autoencoder_run": stage1.run.name, "scale_factor": scale})
    print(f"done: figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
