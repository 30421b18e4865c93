"""Evaluate a trained pixel DDPM run with its EMA weights, by default autoguided by the EMA
weights the run kept at GUIDE_EPOCH (Karras et al. 2024): every figure, samples.npz and the
metrics come from the guided model (AUTOGUIDANCE=1 turns it off).

    python -m Diffusion_run_scripts.DiffusionEval                  # the latest run
    python -m Diffusion_run_scripts.DiffusionEval --RUN=003 --SAMPLER=heun --STEPS=20
    python -m Diffusion_run_scripts.DiffusionEval --SAMPLER=ddpm --STEPS=1000  # a noise run

Writes to saved_plots/diffusion/<run>/eval/: samples_grid.png, forward_schedules.png (linear and
cosine forward strips of one test image with their log-SNR curves), reverse_diffusion.png (x_t
and the predicted x0 during sampling), noised_real.png (test images noised to t, then denoised),
sampler_comparison.png + sampler_comparison.json (seconds per image), samples.npz, metrics.json.
"""
from pathlib import Path

import torch

from models.diffusion import Denoiser
from models.guidance import check_interval
from models.samplers import FLOW_SAMPLERS, SAMPLERS, sample
from train.inference import load_run, run_denoiser, sampling_steps
from train.diffusion_figures import (compared_samplers, noised_and_denoised, parse_sampler,
                                     reverse_strip, write_forward_schedules,
                                     write_sampler_comparison)
from train.evaluator import evaluate_samples, write_metrics
from utils.config import check_choice, check_positive, given_constants, resolve_constants
from utils.data import to_uint8
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.cli import run_cli
from utils.errors import UserError
from utils.plots import save_grid, save_labelled_grid
from utils.run_index import write_indexes
from utils.samples import draw_samples, sampling_chunk, save_samples_npz

RUN = "latest"  # run name or number (e.g. 003), or latest
SAMPLER = "ddim"  # ddim, ddpm, heun, dpmpp2m (a flow run: all but ddpm): every figure
STEPS = 50  # its number of steps (a distilled student: its own, unless given)
ETA = 0.0  # DDIM eta (0: deterministic)
AUTOGUIDANCE = 2.0  # w in guide + w (model - guide), the guide the run's GUIDE_EPOCH EMA; 1: off
GUIDANCE_INTERVAL = ()  # (lo, hi): autoguide only where sigma / alpha is in (lo, hi]; (): always
GRID_SIZE = 8  # the sample grid is GRID_SIZE x GRID_SIZE
STRIP_IMAGES = 3  # images in the reverse and noised-real strips
STRIP_COLUMNS = 10  # timesteps shown per strip
NOISED_T = (50, 150, 300, 450, 600, 750, 900, 999)  # t a test image is noised to, then denoised
COMPARE = ("ddpm-1000", "ddim-50", "ddim-10", "heun-10", "dpmpp2m-10")  # flow: no ddpm
COMPARE_FID = 0  # samples per compared sampler scored with FID, same noise for each (0: none)
COMPARE_IMAGES = 8  # images per sampler in the comparison
N_SAMPLES = 500  # images saved to samples.npz (0: none)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the noise drawn here
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # torchvision's downloads, or the image folder of DATASET="folder"


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    check_choice("SAMPLER", const.SAMPLER, tuple(SAMPLERS))
    check_positive(const, "STEPS", "GRID_SIZE", "STRIP_IMAGES", "STRIP_COLUMNS", "COMPARE_IMAGES")
    specs = [parse_sampler(spec) and spec for spec in const.COMPARE]  # bad ones: stop now
    interval = const.GUIDANCE_INTERVAL
    if interval:
        try:
            check_interval(interval)
        except ValueError:
            raise UserError(f"GUIDANCE_INTERVAL must be (lo, hi) with 0 <= lo < hi, or (), "
                            f"got {interval!r}") from None
    seed_everything(const.SEED)
    device = resolve_device(const.DEVICE)
    loaded = load_run(const.SAVE_ROOT, "diffusion", const.RUN, device)
    amp_dtype = resolve_precision(const.PRECISION, device)
    denoiser = run_denoiser(loaded, amp_dtype, const.AUTOGUIDANCE, tuple(interval) or None)
    guided = const.AUTOGUIDANCE != 1 and "guide" in loaded.nets
    if not guided and const.AUTOGUIDANCE != 1 and "distilled" not in loaded.state:
        print(f"{loaded.run.name} kept no guide network (GUIDE_EPOCH=0, a run from before it, or "
              f"stopped before that epoch): sampling without autoguidance")
    T = denoiser.schedule.timesteps
    const.STEPS, grid = sampling_steps(loaded.state, const.STEPS, "STEPS" in given_constants(argv))
    if denoiser.schedule.kind == "flow" and const.SAMPLER not in FLOW_SAMPLERS:
        raise UserError(f"SAMPLER={const.SAMPLER!r}: a flow run samples with "
                        f"{', '.join(FLOW_SAMPLERS)}")
    if any(not 0 <= t < T for t in const.NOISED_T):
        raise UserError(f"NOISED_T values must lie in [0, {T - 1}], got {const.NOISED_T}")
    test_x = loaded.data.held_out(max(const.STRIP_IMAGES, 16),
                                  const.DATA_ROOT).first(const.STRIP_IMAGES)[0]
    out, title = loaded.run.plots / "eval", loaded.title
    draw = f"{const.SAMPLER}-{const.STEPS}"
    draw += f", eta {const.ETA}" if const.SAMPLER == "ddim" else ""
    draw += f", autoguidance {const.AUTOGUIDANCE:g}" if guided else ""
    draw += " in sigma/alpha ({:g}, {:g}]".format(*interval) if guided and interval else ""
    shape = (loaded.data.channels, loaded.data.image_size, loaded.data.image_size)

    def generate(n: int) -> torch.Tensor:
        noise = torch.randn(n, *shape, device=device)
        return sample(denoiser, noise, const.SAMPLER, const.STEPS, eta=const.ETA,
                      timesteps=grid).x

    save_grid(generate(const.GRID_SIZE ** 2), out / "samples_grid.png", nrow=const.GRID_SIZE,
              title=f"{title}: {draw}")
    write_forward_schedules(test_x[:1].to(device), T, const.STRIP_COLUMNS, denoiser.schedule.kind,
                            out / "forward_schedules.png")
    write_reverse_strip(denoiser, torch.randn(const.STRIP_IMAGES, *shape, device=device), const,
                        out / "reverse_diffusion.png", f"{title}: reverse diffusion ({draw})")
    write_noised_real(denoiser, test_x.to(device), const, out / "noised_real.png",
                      f"{title}: test images noised to t, then denoised ({draw} stride)")
    scoring = dict(extractor=const.EXTRACTOR, save_root=const.SAVE_ROOT,
                   data_root=const.DATA_ROOT, seed=loaded.data.seed)
    def score(images: torch.Tensor) -> dict:
        return evaluate_samples(images, None, loaded.data.dataset, device, **scoring)
    write_sampler_comparison(
        denoiser, torch.randn(const.COMPARE_IMAGES, *shape, device=device),
        compared_samplers(specs, denoiser.schedule.kind == "flow"), out, title,
        const.COMPARE_FID, score)
    if const.N_SAMPLES > 0:
        images, ms = draw_samples(lambda _, k: to_uint8(generate(k)), const.N_SAMPLES,
                                  sampling_chunk(device), device)
        save_samples_npz(images, out / "samples.npz")
        if const.METRICS:
            write_metrics(images, None, loaded.data.dataset, out, device, **scoring,
                          sampling={"sampler": draw, "ms_per_image": ms})
    write_indexes(out.parent)  # the run's index.html and saved_plots/index.html
    print(f"done: figures in {out}")


def write_reverse_strip(denoiser: Denoiser, noise: torch.Tensor, const, path: Path, title: str
                        ) -> None:
    """x_t and the predicted x0 at evenly spaced steps of one sampling run per image."""
    rows, row_labels, col_labels, _ = reverse_strip(denoiser, noise, sampler=const.SAMPLER,
                                                    steps=const.STEPS, columns=const.STRIP_COLUMNS)
    save_labelled_grid(rows, path, row_labels, col_labels, title=title)


def write_noised_real(denoiser: Denoiser, x0: torch.Tensor, const, path: Path, title: str
                      ) -> None:
    """Test images noised to each NOISED_T, then denoised from there by SAMPLER."""
    rows, row_labels = noised_and_denoised(denoiser, x0, list(const.NOISED_T),
                                           sampler=const.SAMPLER, steps=const.STEPS)
    save_labelled_grid(rows, path, row_labels, ["x0"] + [f"t={t}" for t in const.NOISED_T],
                       title=title)


if __name__ == "__main__":
    run_cli(main)
