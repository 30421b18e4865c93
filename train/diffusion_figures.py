"""What the diffusion eval scripts show: forward and reverse strips, denoising a noised real image,
and a timed sampler comparison. Pixel DDPM and latent diffusion share these; a latent model passes
`decode` (latents -> images), a pixel model leaves it as the identity.
"""
import time
from pathlib import Path
from typing import Callable

import torch

from models.diffusion import Denoiser, NoiseSchedule, q_sample
from models.flow import FlowSchedule
from models.samplers import FLOW_SAMPLERS, SAMPLERS, sample
from utils.data import to_uint8
from utils.device import synchronize
from utils.errors import UserError
from utils.plots import save_labelled_grid, save_strips_with_curves
from utils.runs import write_json
from utils.samples import draw_samples, sampling_chunk

Decode = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def strip_timesteps(timesteps: int, columns: int) -> list[int]:
    """`columns` evenly spaced t from 0 to T-1."""
    return torch.linspace(0, timesteps - 1, columns).round().long().tolist()


def forward_strip(schedule: NoiseSchedule, x0: torch.Tensor, ts: list[int], noise: torch.Tensor,
                  decode: Decode = _identity) -> torch.Tensor:
    """x0 (N, ...) noised to each t with one fixed noise: (N, len(ts), C, H, W) decoded images."""
    rows = [decode(q_sample(schedule, x0, t, noise)) for t in ts]
    return torch.stack(rows, dim=1)


def reverse_strip(denoiser: Denoiser, noise: torch.Tensor, *, sampler: str, steps: int,
                  columns: int, decode: Decode = _identity, labels=None):
    """Rows x_t and predicted x0 per image at `columns` points of one sampling run.

    Returns (rows (2N, K, C, H, W), row labels, column labels, final samples).
    """
    x, frames = sample(denoiser, noise.clone(), sampler, steps, labels=labels, snapshots=columns)
    x_t = torch.stack([decode(f[1]) for f in frames], dim=1)  # (N, K, C, H, W)
    x0 = torch.stack([decode(f[2]) for f in frames], dim=1)
    rows = torch.stack([x_t, x0], dim=1).flatten(0, 1)  # x_t row, then its x0 row
    row_labels = [f"{name} #{i}" for i in range(len(noise)) for name in ("x_t", "pred x0")]
    return rows, row_labels, [f"t={f[0]}" for f in frames], decode(x)


def steps_from(t: int, timesteps: int, steps: int) -> int:
    """Sampler steps for a run starting at t: the same stride as `steps` over the full range."""
    return max(1, round(steps * (t + 1) / timesteps))


def noised_and_denoised(denoiser: Denoiser, x0: torch.Tensor, ts: list[int], *, sampler: str,
                        steps: int, decode: Decode = _identity, labels=None, generator=None):
    """Each image noised to every t in ts, then denoised from there by the sampler.

    Returns (rows (2N, 1 + len(ts), C, H, W): original | x_t ... and original | denoised ...,
    row labels). Small t gives the image back; near T the model invents a new one.
    """
    schedule = denoiser.schedule
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    noised, denoised = [], []
    for t in ts:
        x_t = q_sample(schedule, x0, t, noise)
        noised.append(decode(x_t))
        out = sample(denoiser, x_t, sampler, steps_from(t, schedule.timesteps, steps),
                     start_t=t, labels=labels, generator=generator).x
        denoised.append(decode(out))
    original = decode(x0).unsqueeze(1)
    top = torch.cat([original, torch.stack(noised, dim=1)], dim=1)
    bottom = torch.cat([original, torch.stack(denoised, dim=1)], dim=1)
    rows = torch.stack([top, bottom], dim=1).flatten(0, 1)
    labels_ = [f"{name} #{i}" for i in range(len(x0)) for name in ("noised", "denoised")]
    return rows, labels_


def parse_sampler(spec: str) -> tuple[str, int]:
    """'ddim-50' -> ('ddim', 50)."""
    name, _, steps = spec.partition("-")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise UserError(f"sampler spec {spec!r} must look like 'ddpm-1000' or 'ddim-50' "
                        f"(samplers: {', '.join(SAMPLERS)})")
    return name, int(steps)


def compare_samplers(denoiser: Denoiser, noise: torch.Tensor, specs: list[str], *,
                     decode: Decode = _identity, labels=None) -> tuple[torch.Tensor, list[dict]]:
    """The same noise through each sampler spec: (rows (S, N, C, H, W), timings per spec)."""
    rows, timings = [], []
    for spec in specs:
        name, steps = parse_sampler(spec)
        synchronize(noise.device)
        started = time.perf_counter()
        images = decode(sample(denoiser, noise.clone(), name, steps, labels=labels).x)
        synchronize(noise.device)
        seconds = time.perf_counter() - started
        rows.append(images)
        timings.append({"sampler": spec, "seconds_per_image": seconds / len(noise),
                        "images": len(noise)})
    return torch.stack(rows), timings


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


def write_sampler_comparison(denoiser: Denoiser, noise: torch.Tensor, specs: list[str],
                             out: Path, title: str, fid_samples: int = 0, score=None) -> None:
    """The same noise through each sampler spec, timed, and with fid_samples > 0 each spec's
    FID (score(images) -> metrics) on that many samples: figure and JSON. Every spec's FID
    starts from the same fid_samples noise images, so the FIDs differ by the sampler alone and
    not by the draw (which moves a 500-sample FID by as much as a sampler does)."""
    rows, timings = compare_samplers(denoiser, noise, specs)
    if fid_samples > 0:
        fid_noise = torch.randn(fid_samples, *noise.shape[1:], device=noise.device)
        for timing in timings:
            name, steps = parse_sampler(timing["sampler"])
            images, _ = draw_samples(lambda start, k: to_uint8(sample(
                denoiser, fid_noise[start:start + k].clone(), name, steps).x), fid_samples,
                sampling_chunk(noise.device), noise.device)
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
        print(f"flow run: comparing {', '.join(kept)} (ddpm needs a noise schedule)")
    return kept
