"""Evaluate a trained pixel DDPM run with its EMA weights.

    python -m Diffusion_run_scripts.DiffusionEval                  # the latest run
    python -m Diffusion_run_scripts.DiffusionEval --RUN=003 --SAMPLER=ddpm --STEPS=1000

Writes to saved_plots/diffusion/<run>/eval/: samples_grid.png, forward_schedules.png (linear and
cosine forward strips of one test image with their log-SNR curves), reverse_diffusion.png (x_t
and the predicted x0 during sampling), noised_real.png (test images noised to t, then denoised),
sampler_comparison.png + sampler_comparison.json (seconds per image), samples.npz, metrics.json.
"""
from pathlib import Path

import torch

from models.diffusion import Denoiser, NoiseSchedule
from models.flow import FlowSchedule
from models.samplers import FLOW_SAMPLERS, SAMPLERS, sample
from train.checkpoints import load_run
from train.diffusion import checkpoint_denoiser
from train.diffusion_figures import (compare_samplers, forward_strip, noised_and_denoised,
                                     parse_sampler, reverse_strip, strip_timesteps)
from train.evaluator import evaluate_samples, write_metrics
from utils.config import check_choice, check_positive, resolve_constants
from utils.data import to_uint8
from utils.device import resolve_device, resolve_precision, seed_everything
from utils.errors import UserError, run_cli
from utils.plots import save_grid, save_labelled_grid, save_strips_with_curves
from utils.runs import write_json
from utils.samples import draw_samples, save_samples_npz

RUN = "latest"  # run name or number (e.g. 003), or latest
SAMPLER = "ddim"  # ddim or ddpm, for the grid, the strips and samples.npz
STEPS = 50  # its number of steps
ETA = 0.0  # DDIM eta (0: deterministic)
GRID_SIZE = 8  # the sample grid is GRID_SIZE x GRID_SIZE
STRIP_IMAGES = 3  # images in the reverse and noised-real strips
STRIP_COLUMNS = 10  # timesteps shown per strip
NOISED_T = (50, 150, 300, 450, 600, 750, 900, 999)  # t a test image is noised to, then denoised
COMPARE = ("ddpm-1000", "ddim-50", "ddim-10", "heun-10", "dpmpp2m-10")  # sampler-steps to compare
COMPARE_FID = 0  # samples per compared sampler scored with FID (0: timings only)
COMPARE_IMAGES = 8  # images per sampler in the comparison
N_SAMPLES = 500  # images saved to samples.npz (0: none)
METRICS = True  # score the samples (FID, KID, precision/recall vs held-out data) to metrics.json
EXTRACTOR = "evaluator"  # features: evaluator (the project's classifier) or inception (online)
SEED = 0  # seeds the noise drawn here
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
SAVE_ROOT = "."  # folder holding saved_plots/ and saved_models/
DATA_ROOT = "data"  # where torchvision datasets are downloaded


def main(argv=None) -> None:
    const = resolve_constants(globals(), argv)
    check_choice("SAMPLER", const.SAMPLER, tuple(SAMPLERS))
    check_positive(const, "STEPS", "GRID_SIZE", "STRIP_IMAGES", "STRIP_COLUMNS", "COMPARE_IMAGES")
    specs = [parse_sampler(spec) and spec for spec in const.COMPARE]  # bad ones: stop now
    seed_everything(const.SEED)
    device = resolve_device(const.DEVICE)
    loaded = load_run(const.SAVE_ROOT, "diffusion", const.RUN, device)
    denoiser = checkpoint_denoiser(loaded.state, loaded.nets["net"],
                                   amp_dtype=resolve_precision(const.PRECISION, device))
    T = denoiser.schedule.timesteps
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
    shape = (loaded.data.channels, loaded.data.image_size, loaded.data.image_size)

    def generate(n: int) -> torch.Tensor:
        noise = torch.randn(n, *shape, device=device)
        return sample(denoiser, noise, const.SAMPLER, const.STEPS, eta=const.ETA).x

    save_grid(generate(const.GRID_SIZE ** 2), out / "samples_grid.png", nrow=const.GRID_SIZE,
              title=f"{title}: {draw}")
    write_forward_schedules(test_x[:1].to(device), T, const.STRIP_COLUMNS, denoiser.schedule.kind,
                            out / "forward_schedules.png")
    write_reverse_strip(denoiser, torch.randn(const.STRIP_IMAGES, *shape, device=device), const,
                        out / "reverse_diffusion.png", f"{title}: reverse diffusion ({draw})")
    write_noised_real(denoiser, test_x.to(device), const, out / "noised_real.png",
                      f"{title}: test images noised to t, then denoised ({draw} stride)")
    def score(images: torch.Tensor) -> dict:
        return evaluate_samples(images, None, loaded.data.dataset, device,
                                extractor=const.EXTRACTOR, save_root=const.SAVE_ROOT,
                                data_root=const.DATA_ROOT, seed=loaded.data.seed)
    write_sampler_comparison(
        denoiser, torch.randn(const.COMPARE_IMAGES, *shape, device=device),
        compared_samplers(specs, denoiser.schedule.kind == "flow"), out, title,
        const.COMPARE_FID, score)
    if const.N_SAMPLES > 0:
        images, ms = draw_samples(lambda _, k: to_uint8(generate(k)), const.N_SAMPLES, 250, device)
        save_samples_npz(images, out / "samples.npz")
        if const.METRICS:
            write_metrics(images, None, loaded.data.dataset, out, device,
                          extractor=const.EXTRACTOR, save_root=const.SAVE_ROOT,
                          data_root=const.DATA_ROOT,
                          seed=loaded.data.seed, sampling={"sampler": draw, "ms_per_image": ms})
    print(f"done: figures in {out}")


def write_forward_schedules(x0: torch.Tensor, T: int, columns: int, this_run: str,
                            path: Path) -> None:
    """One image on the linear and cosine schedules and the flow path (same noise), with each
    one's log-SNR."""
    ts = strip_timesteps(T, columns)
    noise = torch.randn_like(x0)
    paths = {"linear": NoiseSchedule("linear", T), "cosine": NoiseSchedule("cosine", T),
             "flow": FlowSchedule(T)}
    strips = {kind: forward_strip(p, x0, ts, noise)[0] for kind, p in paths.items()}
    curves = {kind: (range(T), p.log_snr().numpy()) for kind, p in paths.items()}
    save_strips_with_curves(strips, [f"t={t}" for t in ts], curves, path,
                            "log SNR = log(alpha^2 / sigma^2)", marks=ts,
                            title=f"Forward process, same image and noise, T={T} "
                                  f"(this run: {this_run})")


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


def write_sampler_comparison(denoiser: Denoiser, noise: torch.Tensor, specs: list[str],
                             out: Path, title: str, fid_samples: int = 0, score=None) -> None:
    """The same noise through each sampler spec, timed, and with fid_samples > 0 each spec's
    FID (score(images) -> metrics) on that many samples: figure and JSON."""
    rows, timings = compare_samplers(denoiser, noise, specs)
    if fid_samples > 0:
        for timing in timings:
            name, steps = parse_sampler(timing["sampler"])
            images = torch.cat([to_uint8(sample(denoiser, torch.randn(
                min(250, fid_samples - i), *noise.shape[1:], device=noise.device), name, steps).x)
                for i in range(0, fid_samples, 250)])
            metrics = score(images)
            timing.update(fid=metrics["fid"], fid_floor=metrics["real_vs_real"]["fid"],
                          fid_samples=metrics["samples"])
    save_labelled_grid(rows, out / "sampler_comparison.png",
                       [f"{t['sampler']}: {t['seconds_per_image']:.3f} s/img"
                        + (f", FID {t['fid']:.1f}" if "fid" in t else "") for t in timings],
                       title=f"{title}: the same noise through each sampler")
    write_json(out / "sampler_comparison.json", timings)
    for t in timings:
        print(f"{t['sampler']:>12s}: {t['seconds_per_image']:.3f} s/img"
              + (f", FID {t['fid']:.2f} (floor {t['fid_floor']:.2f})" if "fid" in t else ""))


def compared_samplers(specs: list[str], flow: bool) -> list[str]:
    """COMPARE, without the samplers a flow model does not have (said once)."""
    kept = [spec for spec in specs if not flow or parse_sampler(spec)[0] in FLOW_SAMPLERS]
    if len(kept) < len(specs):
        print(f"flow run: comparing {', '.join(kept)} (ddpm and dpmpp2m need a noise schedule)")
    return kept


if __name__ == "__main__":
    run_cli(main)
