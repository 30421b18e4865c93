"""Train one beta-VAE (Higgins et al. 2017), with beta fixed, warmed up or adaptive.

    python -m VAE_run_scripts.vaemain
    python -m VAE_run_scripts.vaemain --BETA_MODE=fixed --BETA=4 --EPOCHS=10
    python -m VAE_run_scripts.vaemain --RESUME=latest --EPOCHS=20

Writes to saved_plots/vae/<run>/: losses.png (total, KL + recon, reconstruction, KL, beta, active
dims; train and test), progression.png (fixed prior samples across epochs), reconstructions.png,
prior_samples.png, traversal_dims.png (every active latent of one image, by KL, labelled with the
factor it captures), traversal_z<i>.png (the top latent over 8 images), report.json (MIG,
per-dim KL), config.json, metrics.jsonl; weights to saved_models/vae/<run>/.
"""
import torch

from train.options import Deadline
from models.vae import OBJECTIVES
from train.vae import BETA_MODES, build_vae, train_vae
from train.vae_figures import write_vae_figures
from train.options import LoopOptions
from utils.config import check_choice, check_positive, resolve_constants
from utils.cli import run_cli
from utils.errors import UserError
from utils.run_index import write_indexes
from utils.runs import MetricsLog
from utils.session import load_splits, open_run, resume_run, seed_and_device

# data
DATASET = "shapes"  # shapes, shapes-arc, digits (embedded); cifar10, mnist, ... (online)
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
IMAGE_SIZE = 32  # pixels (4 * 2^k)
CHANNELS = None  # 1 (grey) or 3 (RGB); None: the data's own (a folder: grey if all are)
N_TRAIN = None  # cap on training images (None: the whole split)
FLIP = False  # random horizontal flips

# model
LATENT_DIM = 10  # latent dimensions
WIDTH = 32  # encoder channels at full resolution (doubling per level, capped at 8x)

# beta
OBJECTIVE = "tcvae"  # beta (beta-VAE), tcvae (beta weighs only the total correlation), capacity
BETA_MODE = "fixed"  # fixed, warmup (linear KL ramp to BETA) or adaptive (the scheduler)
BETA = 20.0  # fixed beta (Higgins et al. 2017; tcvae: on the TC term), or the ramp's end
KL_WARMUP_EPOCHS = 5  # length of the linear ramp (BETA_MODE="warmup")
BETA_INIT = 1.0  # adaptive: starting beta
BETA_GAMMA = 0.1  # adaptive: decay of the moving ratio rho
BETA_ETA = 1.0  # adaptive: exponent on rho
BETA_MIN = 1e-8  # adaptive: lower bound on beta
BETA_MAX = 10.0  # adaptive: upper bound on beta
BETA_WARMUP = 5  # adaptive: epochs that only record losses before beta moves
CAPACITY_MAX = 25.0  # capacity: the KL target C (nats) rises from 0 to this (Burgess et al. 2018)
CAPACITY_EPOCHS = 10  # capacity: ... over this many epochs
CAPACITY_GAMMA = 100.0  # capacity: weight of |KL - C| (Burgess et al. 2018: 1000, diverges here)
CAPACITY_GRAD_CLIP = 1000.0  # capacity: the clip of GRAD_CLIP="auto" (without: 2 of 3 diverged)
GRAD_CLIP = "auto"  # clip the gradient's global norm to this; None: never; auto: 1000 with capacity

# training
EPOCHS = 30  # passes over the training set (docs/studies/vae.md)
BATCH_SIZE = 128  # images per step
LR = 1e-3  # Adam learning rate
SEED = 0  # seeds python, numpy and torch
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop training after this many minutes of wall time (None: all EPOCHS)

# outputs
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here
TAG = None  # run-name suffix (None: the beta mode)
CHECKPOINT_EVERY = 5  # epochs between checkpoints (and always at the end)
TENSORBOARD = True  # scalars and samples to <run>/tensorboard/ (needs the tensorboard package)
PROGRESSION_ROWS = 8  # fixed prior samples followed across epochs


def grad_clip(value, objective: str, capacity_clip: float) -> float:
    """The clip norm GRAD_CLIP asks for (0: none); "auto" clips only the capacity objective,
    whose |KL - C| term can spike (docs/studies/vae.md)."""
    if value == "auto":
        return capacity_clip if objective == "capacity" else 0.0
    return float(value or 0.0)


def main(argv=None):
    """Train (or resume) one run; returns (run, report)."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "vae", argv, output_constants=("TAG",))
    check_choice("BETA_MODE", const.BETA_MODE, BETA_MODES)
    check_choice("OBJECTIVE", const.OBJECTIVE, OBJECTIVES)
    check_positive(const, "BATCH_SIZE", "LR", "LATENT_DIM", "WIDTH", "BETA", "BETA_INIT",
                   "CHECKPOINT_EVERY", "PROGRESSION_ROWS", "KL_WARMUP_EPOCHS",
                   "CAPACITY_EPOCHS", "CAPACITY_GAMMA", "CAPACITY_GRAD_CLIP",
                   *(["GRAD_CLIP"] if const.GRAD_CLIP not in (None, "auto") else []))
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    data, train, test = load_splits(const)
    model_args = dict(image_size=const.IMAGE_SIZE, channels=data.channels,
                      latent_dim=const.LATENT_DIM, width=const.WIDTH)
    scheduler_args = dict(beta_init=const.BETA_INIT, gamma=const.BETA_GAMMA, eta=const.BETA_ETA,
                          beta_min=const.BETA_MIN, beta_max=const.BETA_MAX,
                          warmup=const.BETA_WARMUP)
    steps_per_epoch = max(1, len(train) // const.BATCH_SIZE)
    try:
        setup = build_vae(model_args, device, lr=const.LR, beta_mode=const.BETA_MODE,
                          beta=const.BETA,
                          scheduler_args=scheduler_args, amp_dtype=amp_dtype,
                          warmup_steps=const.KL_WARMUP_EPOCHS * steps_per_epoch,
                          objective=const.OBJECTIVE, dataset_size=len(train),
                          capacity_max=const.CAPACITY_MAX, capacity_gamma=const.CAPACITY_GAMMA,
                          capacity_steps=const.CAPACITY_EPOCHS * steps_per_epoch,
                          grad_clip=grad_clip(const.GRAD_CLIP, const.OBJECTIVE,
                                              const.CAPACITY_GRAD_CLIP))
    except ValueError as err:  # the scheduler's bounds
        raise UserError(str(err)) from None
    tag = const.TAG or run_tag(const)
    run = open_run(const, "vae", tag, run)
    fixed_z = state["fixed_z"] if state else torch.randn(const.PROGRESSION_ROWS, const.LATENT_DIM)
    train_vae(setup, train, test, run, LoopOptions.of(const, data, state, deadline),
              fixed_z.to(device))
    records = MetricsLog(run.metrics_path).read()
    last = records[-1] if records else {"epoch": 0, "test_kl_dims": [0.0] * const.LATENT_DIM}
    report = write_vae_figures(setup.model, test, last["test_kl_dims"], run.plots,
                               f"{run.name} (epoch {last['epoch']})")
    mig = "n/a" if report["mig"] is None else f"{report['mig']:.3f}"
    write_indexes(run.plots)  # the run's index.html and saved_plots/index.html
    print(f"MIG {mig}, active dims {report['active_dims']}; done: figures in {run.plots}")
    return run, report


def run_tag(const) -> str:
    """The run's name tag: the objective and what weighs its KL term (the capacity objective's
    target C; beta, fixed or the scheduler's name, for the others)."""
    if const.OBJECTIVE == "capacity":
        return f"capacity-C{const.CAPACITY_MAX:g}"
    tag = f"beta{const.BETA:g}" if const.BETA_MODE == "fixed" else const.BETA_MODE
    return tag if const.OBJECTIVE == "beta" else f"{const.OBJECTIVE}-{tag}"


if __name__ == "__main__":
    run_cli(main)
