"""A peer at the same wall time: lucidrains' denoising-diffusion-pytorch (a dev-only dependency,
never imported by the project's own code) trained for MINUTES on the same data with its own
recipe (its Trainer's defaults: Adam 1e-4 with betas (0.9, 0.99), batch 16, horizontal flips,
gradient norm clipped to 1, EMA 0.995 updated every 10 steps; its GaussianDiffusion's v
objective on the sigmoid schedule), its UNet sized for a CPU, sampled with its DDIM and scored
with the project's evaluator like every eval script.

    python -m benchmarks.peer_diffusion --DATASET=digits --MINUTES=3
    python -m benchmarks.compare_families --FAMILIES='("diffusion", "ldm", "peer")'

Writes saved_plots/peer/<run>/: peer.json (steps, images, seconds, parameters) and eval/
(samples.npz, metrics.json, samples_grid.png). compare_families puts it in its table.
"""
import json
import time

import torch

from train.evaluator import write_metrics
from train.options import Deadline
from utils.cli import run_cli
from utils.config import resolve_constants
from utils.data import load_dataset, to_uint8
from utils.device import resolve_device, seed_everything
from utils.errors import UserError
from utils.files import write_json
from utils.plots import save_grid
from utils.runs import new_run
from utils.samples import draw_samples, sampling_chunk, save_samples_npz

DATASET = "shapes"  # any of the project's data sets
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"
IMAGE_SIZE = 32  # pixels
N_TRAIN = None  # cap on training images (None: the whole split)
MINUTES = 10.0  # wall-clock training budget
DIM = 32  # the peer UNet's base width (its README's 64, halved for a CPU)
DIM_MULTS = (1, 2, 4)  # its width multipliers (its default (1, 2, 4, 8) has a 4x4 level at 32)
BATCH_SIZE = 16  # its Trainer's train_batch_size
LR = 1e-4  # its Trainer's train_lr
BETAS = (0.9, 0.99)  # its Trainer's adam_betas
EMA_DECAY = 0.995  # its Trainer's ema_decay
EMA_EVERY = 10  # its Trainer's ema_update_every
FLIP = True  # its Trainer's augment_horizontal_flip
SAMPLING_STEPS = 50  # its DDIM steps (GaussianDiffusion's sampling_timesteps)
N_SAMPLES = 2000  # samples scored
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the peer's weights, batches and samples
DEVICE = "auto"  # auto, cpu, cuda
SAVE_ROOT = "."  # saved_plots/ (and the evaluator in saved_models/) are created here


def peer():
    """The peer's classes, or one line saying how to install them."""
    try:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA
    except ImportError:
        raise UserError("the peer is a dev-only dependency: pip install -r requirements-dev.txt "
                        "(denoising-diffusion-pytorch)") from None
    return Unet, GaussianDiffusion, EMA


def train_peer(diffusion, ema, images: torch.Tensor, const, deadline: Deadline) -> dict:
    """Its Trainer's step, bounded by wall time (at least one step): batches from one shuffled
    pass at a time."""
    opt = torch.optim.Adam(diffusion.parameters(), lr=const.LR, betas=tuple(const.BETAS))
    steps, started = 0, time.perf_counter()
    while steps == 0 or not deadline.passed():
        for idx in torch.randperm(len(images)).split(const.BATCH_SIZE):
            if len(idx) < const.BATCH_SIZE or (steps and deadline.passed()):
                break
            x = images[idx].float() / 255  # the peer normalises [0, 1] to [-1, 1] itself
            if const.FLIP:
                flip = torch.rand(len(x)) < 0.5
                x[flip] = x[flip].flip(-1)
            loss = diffusion(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            opt.step()
            ema.update()
            steps += 1
    seconds = time.perf_counter() - started
    return {"steps": steps, "images": steps * const.BATCH_SIZE, "loop_seconds": seconds,
            "img_per_s": steps * const.BATCH_SIZE / max(seconds, 1e-9)}


def main(argv=None) -> dict:
    const = resolve_constants(globals(), argv)
    deadline = Deadline(const.MINUTES)
    unet_class, diffusion_class, ema_class = peer()
    device = resolve_device(const.DEVICE)
    seed_everything(const.SEED)
    train = load_dataset(const.DATASET, "train", const.IMAGE_SIZE, root=const.DATA_ROOT,
                         n=const.N_TRAIN, seed=const.SEED)
    if len(train) < const.BATCH_SIZE:
        raise UserError(f"{const.DATASET} has {len(train)} training images, fewer than one batch "
                        f"of {const.BATCH_SIZE}")
    channels = train.shape[0]
    run = new_run(const.SAVE_ROOT, "peer", const.DATASET, "lucidrains")
    unet = unet_class(dim=const.DIM, dim_mults=tuple(const.DIM_MULTS), channels=channels)
    diffusion = diffusion_class(unet, image_size=const.IMAGE_SIZE,
                                sampling_timesteps=const.SAMPLING_STEPS).to(device)
    ema = ema_class(diffusion, beta=const.EMA_DECAY, update_every=const.EMA_EVERY)
    info = train_peer(diffusion, ema, train.images.to(device), const, deadline)
    info["params"] = sum(p.numel() for p in unet.parameters())
    print(f"peer: {info['steps']} steps, {info['images']:,} images in "
          f"{info['loop_seconds'] / 60:.1f} min ({info['img_per_s']:.0f} img/s)")
    sampler = ema.ema_model.eval()

    @torch.no_grad()
    def generate(start: int, count: int) -> torch.Tensor:
        return to_uint8(sampler.sample(batch_size=count) * 2 - 1)
    images, ms = draw_samples(generate, const.N_SAMPLES, sampling_chunk(device), device)
    out = run.plots / "eval"
    save_samples_npz(images, out / "samples.npz")
    save_grid(images[:64], out / "samples_grid.png", nrow=8,
              title=f"denoising-diffusion-pytorch, {const.MINUTES:g} minutes")
    write_json(run.plots / "peer.json", {"constants": vars(const), **info})
    write_metrics(images, None, const.DATASET, out, device, extractor=const.EXTRACTOR,
                  save_root=const.SAVE_ROOT, data_root=const.DATA_ROOT, seed=const.SEED,
                  sampling={"sampler": f"DDIM-{const.SAMPLING_STEPS} (the peer's)",
                            "ms_per_image": ms})
    print(f"done: {run.plots}")
    return {"run": run.name, **info, "metrics": json.loads((out / "metrics.json").read_text())}


if __name__ == "__main__":
    run_cli(main)
