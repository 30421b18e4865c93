"""Evaluate a trained DCGAN run.

    python -m GAN_run_scripts.evalGan                    # the latest run
    python -m GAN_run_scripts.evalGan --RUN=001 --N_SAMPLES=5000

Writes to saved_plots/gan/<run>/eval/: samples_grid.png, interpolations.png, progression.png,
losses.png, samples.npz (uint8 NHWC `images`) and metrics.json (FID, KID, precision, recall
against held-out images, with the real-vs-real floor). A run trained with EMA_DECAY is sampled
with its averaged generator; USE_EMA=False scores the raw one instead, into eval_raw/.
"""
import torch

from train.inference import load_run
from train.evaluator import write_metrics
from train.gan_figures import write_figures
from train.inference import generate, recalibrate_batchnorm
from utils.config import resolve_constants
from utils.device import resolve_device, seed_everything
from utils.cli import run_cli
from utils.plots import save_grid, save_labelled_grid
from utils.run_index import write_indexes
from utils.runs import MetricsLog, load_state
from utils.samples import draw_samples, save_samples_npz, slerp

RUN = "latest"  # run name or number (e.g. 001), or latest
USE_EMA = True  # sample the EMA generator if the run kept one (False: the raw generator)
N_SAMPLES = 1000  # images saved to samples.npz (0: none)
GRID_SIZE = 10  # the sample grid is GRID_SIZE x GRID_SIZE
N_PAIRS = 8  # latent pairs interpolated (rows)
STEPS = 10  # images per interpolation (columns)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the latents drawn here
DEVICE = "auto"  # auto, cpu, cuda
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    seed_everything(const.SEED)
    device = resolve_device(const.DEVICE)
    loaded = load_run(const.SAVE_ROOT, "gan", const.RUN, device)
    generator, run, out = loaded.nets["generator"], loaded.run, loaded.run.plots / "eval"
    if not const.USE_EMA and loaded.state.get("ema") is not None:
        load_state(generator, loaded.state["generator"], "generator")
        recalibrate_batchnorm(generator)  # its running statistics lag: only the EMA's were set
        out = run.plots / "eval_raw"
    z = torch.randn(const.GRID_SIZE ** 2, generator.latent_dim, device=device)
    save_grid(generate(generator, z), out / "samples_grid.png", nrow=const.GRID_SIZE,
              title=f"{run.name}: {const.GRID_SIZE ** 2} samples (epoch {loaded.state['epoch']})")
    write_interpolations(generator, const.N_PAIRS, const.STEPS, out / "interpolations.png")
    write_figures(out, list(loaded.state["frames"]), MetricsLog(run.metrics_path).read(),
                  run.name)
    if const.N_SAMPLES > 0:
        images, ms = draw_samples(
            lambda _, k: generate(generator, torch.randn(k, generator.latent_dim, device=device)),
            const.N_SAMPLES, 500, device)
        save_samples_npz(images, out / "samples.npz")
        if const.METRICS:
            write_metrics(images, None, loaded.data.dataset, out, device, extractor=const.EXTRACTOR,
                          save_root=const.SAVE_ROOT, data_root=const.DATA_ROOT,
                          seed=loaded.data.seed,
                          sampling={"sampler": "generator", "ms_per_image": ms})
    write_indexes(out.parent)  # the run's index.html and saved_plots/index.html
    print(f"done: figures in {out}")


def write_interpolations(generator, pairs: int, steps: int, path) -> None:
    """Spherical interpolation between `pairs` random latent pairs, `steps` images each."""
    device = next(generator.parameters()).device
    ends = torch.randn(2, pairs, generator.latent_dim, device=device)
    path_z = slerp(ends[0], ends[1], steps)  # (P, S, D)
    images = generate(generator, path_z.flatten(0, 1)).unflatten(0, (pairs, steps))
    save_labelled_grid(images, path, title="Spherical interpolation between latent pairs",
                       xlabel="from z_a (left) to z_b (right)")


if __name__ == "__main__":
    run_cli(main)
