"""Distil a finished latent diffusion run (stage 2, the teacher) into a class-conditional student
that samples in one to a few steps, with the teacher's classifier-free guidance baked in:
progressive distillation (Salimans & Ho 2022) or rectified-flow reflow (Liu et al. 2023). How
each works: docs/distillation.md.

    python -m LDM_run_scripts.LDMDistill                        # latest LDM run, 16 -> 1 steps
    python -m LDM_run_scripts.LDMDistill --METHOD=reflow --STUDENT_STEPS=2
    python -m LDM_run_scripts.LDMEval                           # the student, in its steps

The student is an LDM run on the teacher's autoencoder, named <n>-ldm-<data>-<METHOD>:
saved_plots/ldm/<run>/ has progression.png (one sample per class, in its own steps, after each
epoch; progressive: after each round), losses.png, config.json, metrics.jsonl; its weights (and
reflow's couplings.pt) are in saved_models/ldm/<run>/.
"""
from train.distill_sources import run_distillation
from utils.cli import run_cli
from utils.config import resolve_constants

TEACHER = "latest"  # the LDM run to distil (name or number, or latest)
METHOD = "progressive"  # progressive (Salimans & Ho 2022) or reflow (Liu et al. 2023)
STUDENT_STEPS = 1  # the steps the student samples in
TEACHER_STEPS = 16  # progressive: the teacher's steps in round 1 (STUDENT_STEPS x 2^k)
TEACHER_SOLVER = "ddim"  # progressive: the teacher's step in round 1: ddim (the paper's) or heun
ROUND_STEPS = 600  # progressive: optimiser steps per round (one epoch)
PAIRS = 4096  # reflow: couplings (noise, image) drawn from the teacher's ODE
PAIR_SAMPLER = "heun"  # reflow: the ODE solver drawing them (ddim, heun, dpmpp2m)
PAIR_STEPS = 10  # reflow: its steps
EPOCHS = 8  # reflow: passes over the couplings (progressive: one per round)
GUIDANCE = 2.0  # the teacher's CFG scale, baked into the student (LDMEval's default)
BATCH_SIZE = 32  # latents per step, over all processes (as many as the pixel student sees)
LR = 1e-4  # AdamW learning rate, constant after WARMUP_STEPS
WARMUP_STEPS = 50  # linear LR warm-up steps
EMA_DECAY = 0.995  # EMA of the student's weights, which sample and teach the next round
DATA_ROOT = "data"  # the images of the teacher's autoencoder run (its held-out ones)
SEED = 0  # seeds python, numpy and torch, and the couplings' noise
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop after this many minutes of wall time (None: all of it)
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
CHECKPOINT_EVERY = 1  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/ (needs the tensorboard package)


def main(argv=None):
    """Distil (or resume distilling) a student; returns its run."""
    return run_distillation(resolve_constants(globals(), argv), "ldm", argv)


if __name__ == "__main__":
    run_cli(main)
