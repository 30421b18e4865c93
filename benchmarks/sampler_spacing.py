"""Which step grid suits each sampler and schedule: the error of DDIM/Euler, Heun and
DPM-Solver++(2M) against the exact probability-flow ODE solution for Gaussian data, driven by
the exact denoiser (the oracle of tests/test_samplers.py), for every spacing and step count.

    python -m benchmarks.sampler_spacing                 # a few seconds

Prints and publishes (docs/results/sampler_spacing.md, sd_spacing.md) two markdown tables (max
absolute error over 61 starting points; lower is better): the project's spacings (docs' table
and models.grids.DEFAULT_SPACING come from it), and Stable Diffusion's grids (models.grids, as
diffusers builds them) on SD's scaled-linear schedule, from which StableDiffusion's
TIMESTEP_SPACING default comes.
"""
import math

import torch

from models.diffusion import Denoiser, NoiseSchedule
from models.flow import FlowSchedule
from models.grids import SD_SPACINGS, sd_timesteps
from models.grids import SPACINGS
from models.samplers import sample
from benchmarks.report import publish
from utils.cli import run_cli
from utils.config import resolve_constants

STEPS = (5, 10, 20, 50)  # step counts compared
SD_STEPS = (10, 20, 30, 50)  # step counts compared on Stable Diffusion's grids
MU, STD = 0.4, 0.5  # the Gaussian data N(MU, STD^2)
X_T = torch.linspace(-3, 3, 61, dtype=torch.float64)  # deterministic starting points
RESULTS = "docs/results"  # publish the tables here for docs/ (None: only print them)


def noise_schedule_case(kind: str) -> tuple[Denoiser, torch.Tensor]:
    """E[eps | x_t] of Gaussian data as an epsilon network, and the exact ODE endpoint."""
    schedule = NoiseSchedule(kind, 1000)

    def net(x, t, labels):
        a = schedule.alphas_cumprod[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    a = schedule.alphas_cumprod[-1].item()
    exact = MU + (X_T / math.sqrt(a) - MU) * STD / math.sqrt(STD ** 2 + (1 - a) / a)
    return Denoiser(net, schedule, "epsilon"), exact


def flow_case() -> tuple[Denoiser, torch.Tensor]:
    """E[eps - x0 | x_t] of Gaussian data on the flow path, and the exact transport."""
    schedule = FlowSchedule(1000)

    def net(x, net_time, labels):
        t = (net_time.to(x.dtype) / schedule.timesteps).view(-1, *[1] * (x.dim() - 1))
        var = (1 - t) ** 2 * STD ** 2 + t ** 2
        x0 = MU + (1 - t) * STD ** 2 / var * (x - (1 - t) * MU)
        return t / var * (x - (1 - t) * MU) - x0
    return Denoiser(net, schedule, "flow"), MU + STD * X_T


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    cases = [(kind, noise_schedule_case(kind), ("ddim", "heun", "dpmpp2m"))
             for kind in ("cosine", "linear")] + [("flow", flow_case(), ("euler", "heun"))]
    rows = []
    lines = ["| schedule | sampler | spacing | " + " | ".join(f"{n} steps" for n in const.STEPS)
             + " |", "|---|---|---|" + "---|" * len(const.STEPS)]
    for kind, (denoiser, exact), samplers in cases:
        for name in samplers:
            for spacing in SPACINGS:
                errors = [(sample(denoiser, X_T.clone(), name, n, spacing=spacing).x - exact)
                          .abs().max().item() for n in const.STEPS]
                rows.append({"schedule": kind, "sampler": name, "spacing": spacing,
                             "errors": errors})
                lines.append(f"| {kind} | {name} | {spacing} | "
                             + " | ".join(f"{e:.3g}" for e in errors) + " |")
    print("\n".join(lines))
    sd_rows, sd_lines = sd_grids(const.SD_STEPS)
    print("\n" + "\n".join(sd_lines))
    for name, part, table in (("sampler_spacing", rows, lines), ("sd_spacing", sd_rows, sd_lines)):
        publish(const.RESULTS, name, "\n".join(table), {"steps": const.STEPS, "rows": part},
                module=__name__, argv=argv, precision="float64 (exact oracle)")
    return rows + sd_rows


def sd_grids(steps: tuple) -> tuple[list[dict], list[str]]:
    """The same error for SD's samplers on SD's schedule and timestep grids: x_T ~ N(0, 1) is
    the noise of t = T - 1, and a grid that starts lower (leading) treats it as less noisy."""
    denoiser, exact = noise_schedule_case("scaled_linear")
    alphas_cumprod, rows = denoiser.schedule.alphas_cumprod, []
    lines = ["| SD sampler | spacing | first t at 30 steps | "
             + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for name in ("ddim", "dpmpp2m"):
        for spacing in SD_SPACINGS:
            grids = [sd_timesteps(alphas_cumprod, n, spacing, name) for n in steps]
            errors = [(sample(denoiser, X_T.clone(), name, len(g), timesteps=g).x - exact)
                      .abs().max().item() for g in grids]
            first = sd_timesteps(alphas_cumprod, 30, spacing, name)[0]
            rows.append({"schedule": "scaled_linear", "sampler": name, "spacing": spacing,
                         "errors": errors, "first_t": first})
            lines.append(f"| {name} | {spacing} | {first} | "
                         + " | ".join(f"{e:.3g}" for e in errors) + " |")
    return rows, lines


if __name__ == "__main__":
    run_cli(main)
