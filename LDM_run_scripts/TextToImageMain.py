"""Text-to-image from scratch, stage 2: Stable Diffusion's cross-attention UNet at a CPU size on
the cached latents of the captioned scenes, conditioned on the captions through the pre-trained
text encoder, with caption dropout for text classifier-free guidance.

    python -m LDM_run_scripts.TextEncoderMain                      # stage 0: text encoder
    python -m LDM_run_scripts.LDMAutoencoderMain --DATASET=scenes --EPOCHS=3  # stage 1
    python -m LDM_run_scripts.TextToImageMain                      # stage 2: this
    python -m LDM_run_scripts.StableDiffusion --WEIGHTS=latest --PROMPT="a red star on the left"

Writes saved_plots/t2i/<run>/: progression.png (the PROMPTS, one image each, guided at GUIDANCE,
from fixed noise, after every epoch), losses.png, config.json, metrics.jsonl; weights (with the
tokenizer) to saved_models/t2i/<run>/. docs/text_to_image.md explains each stage.
"""
import torch

from models.samplers import FLOW_SAMPLERS
from train.diffusion import train_diffusion
from train.diffusion_step import build_diffusion
from train.inference import build_schedule
from train.latents import finished_stage1, held_out_latents
from train.options import Deadline, LoopOptions
from train.text_encoder import build_tokenizer, text_args
from train.text_to_image import (FAMILY, TEXT_ENCODERS, caption_batches, caption_ids,
                                 model_args, prompt_frame, text_encoder_run, training_scenes)
from utils.cli import run_cli
from utils.config import check_choice, check_positive, resolve_constants
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.session import open_run, resume_run, seed_and_device
from utils.word_tokenizer import WordTokenizer

# stages before this one
AUTOENCODER_RUN = "latest"  # the LDMAutoencoderMain run on DATASET="scenes"
TEXT_ENCODER_RUN = "latest"  # the TextEncoderMain run (tokenizer and text weights)
TEXT_ENCODER = "joint"  # joint (pre-trained, trained on: measured best), frozen, scratch
TEXT_WIDTH = 64  # scratch only: the text transformer's width, layers and heads
TEXT_LAYERS = 2
TEXT_HEADS = 4
DATA_ROOT = "data"  # unused by the embedded scenes; kept for the shared loaders

# diffusion
SCHEDULE = "cosine"  # linear or cosine (noise schedules)
TIMESTEPS = 1000  # T
PREDICTION = "flow"  # flow (rectified flow), v, epsilon or x0
LOGIT_MEAN = 0.0  # flow: logit-normal training times (Esser et al. 2024)
LOGIT_STD = 1.0
CAPTION_DROPOUT = 0.1  # share of captions replaced by the empty one (CFG training)

# model (SDUNet at a CPU size)
BASE = 64  # channels at the latent resolution
CHANNEL_MULT = (1, 2)  # channel multiplier per level
BLOCKS = 1  # residual blocks per level
ATTENTION_LEVELS = (0, 1)  # levels with self- and cross-attention (0: the latent resolution)
HEADS = 4  # attention heads

# training
EPOCHS = 14  # passes over the cached latents, each with newly drawn captions (30 min)
BATCH_SIZE = 128  # latents per step
LR = 5e-4  # AdamW peak learning rate
LR_SCHEDULE = "cosine"  # after warm-up: constant or cosine
WARMUP_STEPS = 200  # linear warm-up steps
BETAS = (0.9, 0.999)  # AdamW betas
EMA_DECAY = 0.995  # EMA of the weights, used for samples
SEED = 0  # seeds python, numpy and torch, and the captions
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/
GUIDANCE = 3.0  # text CFG scale of the per-epoch samples (StableDiffusion's default for the run)
SAMPLE_STEPS = 20  # sampler steps of the per-epoch samples (and StableDiffusion's default)
SAMPLER = "dpmpp2m"  # the per-epoch samples' sampler
PROMPTS = ("a small red star in the top left corner", "a large blue circle in the centre",
           "a green star at the bottom", "a purple triangle on the right",
           "a yellow square to the left of a pink circle", "a red circle above a blue square")


def main(argv=None):
    """Train (or resume) the text-conditioned latent UNet; returns the run."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, FAMILY, argv,
                                   output_constants=("GUIDANCE", "SAMPLE_STEPS", "SAMPLER"))
    check_choice("TEXT_ENCODER", const.TEXT_ENCODER, TEXT_ENCODERS)
    check_choice("LR_SCHEDULE", const.LR_SCHEDULE, ("constant", "cosine"))
    check_choice("SAMPLER", const.SAMPLER, FLOW_SAMPLERS)
    check_positive(const, "BATCH_SIZE", "LR", "BASE", "TIMESTEPS", "SAMPLE_STEPS",
                   "WARMUP_STEPS", "CHECKPOINT_EVERY")
    if not 0 <= const.CAPTION_DROPOUT < 1:
        raise UserError(f"CAPTION_DROPOUT must be in [0, 1), got {const.CAPTION_DROPOUT}")
    schedule = build_schedule(const.PREDICTION, const.SCHEDULE, const.TIMESTEPS,
                              const.LOGIT_MEAN, const.LOGIT_STD)
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    stage1, cache = finished_stage1(const.SAVE_ROOT, const.AUTOENCODER_RUN, device)
    const.AUTOENCODER_RUN = stage1.run.name  # a resumed run keeps these exact stages
    scenes = training_scenes(stage1, cache)
    ae, scale = stage1.nets["autoencoder"], stage1.state["latent_stats"]["scale_factor"]
    encoder = None
    if const.TEXT_ENCODER == "scratch":
        tokenizer = (WordTokenizer.from_dict(state["tokenizer"]) if state
                     else build_tokenizer(scenes, const.SEED))
        args = text_args(tokenizer, const.TEXT_WIDTH, const.TEXT_LAYERS, const.TEXT_HEADS)
        const.TEXT_ENCODER_RUN = None
    else:
        encoder = text_encoder_run(const.SAVE_ROOT, const.TEXT_ENCODER_RUN)
        const.TEXT_ENCODER_RUN = encoder["run"]
        tokenizer, args = WordTokenizer.from_dict(encoder["tokenizer"]), encoder["text_args"]
    prompts = list(const.PROMPTS)
    for prompt in prompts:  # a prompt the tokenizer cannot read: one line, before training
        tokenizer.check(prompt)
    steps_per_epoch = max(1, len(scenes["objects"]) // const.BATCH_SIZE)
    setup = build_diffusion(model_args(const, tokenizer, args, cache["mean"].shape[1]),
                            schedule, device, lr=const.LR, warmup_steps=const.WARMUP_STEPS,
                            total_steps=const.EPOCHS * steps_per_epoch,
                            lr_schedule=const.LR_SCHEDULE, betas=const.BETAS,
                            ema_decay=const.EMA_DECAY, amp_dtype=amp_dtype,
                            prediction_type=const.PREDICTION, label_dropout=const.CAPTION_DROPOUT)
    if encoder is not None and state is None:  # the pre-trained text weights, in both copies
        for net in (setup.model, setup.ema.module):
            net.text.load_state_dict(encoder["text"])
    run = open_run(const, FAMILY, f"{const.PREDICTION}-{const.TEXT_ENCODER}", run,
                   dataset="scenes")

    def snapshot() -> torch.Tensor:
        return prompt_frame(setup.ema.module, ae, tokenizer, schedule, const.PREDICTION, scale,
                            prompts, const, stage1.data.image_size, device)

    def batches(epoch):
        ids = caption_ids(tokenizer, scenes, const.SEED * 1000 + epoch)
        return caption_batches(cache, scale, ids, const.BATCH_SIZE, device)
    train_diffusion(
        setup, batches, steps_per_epoch, held_out_latents(stage1, const.DATA_ROOT), run,
        LoopOptions.of(const, stage1.data, state, deadline), kind=FAMILY, snapshot=snapshot,
        fixed_noise=torch.zeros(len(prompts)), row_labels=tuple(prompts),
        sample_title=f"one image per prompt, text CFG {const.GUIDANCE}, {const.SAMPLER} "
                     f"{const.SAMPLE_STEPS}",
        extras={"autoencoder_run": stage1.run.name, "scale_factor": scale,
                "tokenizer": tokenizer.to_dict(), "text_encoder_run": const.TEXT_ENCODER_RUN})
    write_indexes(run.plots)
    print(f"done: figures in {run.plots}; sample it with python -m "
          f"LDM_run_scripts.StableDiffusion --WEIGHTS={run.name} --PROMPT=...")
    return run


if __name__ == "__main__":
    run_cli(main)
