"""What a latent diffusion recipe costs: floating-point operations counted for one training step
of each stage and one sample, multiplied out to the whole recipe, and turned into hours at a
few sustained GPU throughputs. This CPU's seconds per step are measured beside them.

    python -m benchmarks.recipe_cost                        # the gpu64 recipe (docs/recipes.md)

The operations are counted by torch.utils.flop_counter on the CPU (matrix multiplications and
convolutions, forward and backward, as the step runs them: normalisations and activations are
left out, a few percent); no GPU was used, so the hours are an estimate, not a measurement. A
GPU sustains well under its peak: the columns show three rates so a reader can pick theirs.
Publishes docs/results/recipe_cost_<RECIPE_NAME>.md (RESULTS=None: only printed).
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from LDM_run_scripts import LDMAutoencoderMain, LDMDiffusionMain, LDMEval
from train.autoencoder import ae_step, build_autoencoder
from train.diffusion_step import build_diffusion, diffusion_step
from train.inference import build_schedule
from utils.cli import run_cli
from utils.config import resolve_constants
from utils.recipes import RECIPES
from utils.session import denoiser_args
from benchmarks.report import publish

RECIPE_NAME = "gpu64"  # the recipe of utils/recipes.py to cost
N_IMAGES = 50_000  # training images of the recipe's data set (CIFAR-10's train split)
CHANNELS = 3  # their channels
CLASSES = 10  # their classes
N_SAMPLES = 10_000  # images sampled for an evaluation (FID on 10k)
RATES = (25.0, 50.0, 100.0)  # sustained TFLOP/s of the hour columns
OVERRIDES = {}  # extra constants per script, e.g. {"LDMAutoencoderMain": ["--BASE=8"]} (tests)
TIME_CPU = True  # also time one step of each stage on this CPU (fp32)
RESULTS = "docs/results"  # publish the table here for docs/ (None: only print it)


def constants(module, const) -> object:
    """The script's constants under the recipe, with OVERRIDES for it."""
    name = module.__name__.split(".")[-1]
    return resolve_constants(vars(module), [f"--RECIPE={const.RECIPE_NAME}",
                                            *const.OVERRIDES.get(name, [])])


def counted(step, time_it: bool) -> tuple[float, float | None]:
    """FLOPs of one call of `step` and, if asked, the seconds of a second, uncounted call."""
    with FlopCounterMode(display=False) as counter:
        step()
    seconds = None
    if time_it:
        started = time.perf_counter()
        step()
        seconds = time.perf_counter() - started
    return float(counter.get_total_flops()), seconds


def stage1(const, cpu: torch.device) -> tuple[dict, object, int]:
    """The autoencoder's step (with the discriminator on) and its run length."""
    c = constants(LDMAutoencoderMain, const)
    model_args, disc_args, loss = LDMAutoencoderMain.autoencoder_parts(c, const.CHANNELS)
    steps = c.EPOCHS * max(1, const.N_IMAGES // c.BATCH_SIZE)
    setup = build_autoencoder(model_args, disc_args, cpu, lr=(c.LR, c.DISC_LR),
                              lr_min=(c.LR_MIN, c.DISC_LR_MIN), total_steps=steps, loss=loss)
    x = torch.rand(c.BATCH_SIZE, const.CHANNELS, c.IMAGE_SIZE, c.IMAGE_SIZE) * 2 - 1
    flops, seconds = counted(lambda: ae_step(setup, x, c.ADV_START + c.ADV_WARMUP_STEPS),
                             const.TIME_CPU)
    with FlopCounterMode(display=False) as encode:  # caching the latents: one encoder pass
        with torch.no_grad():
            latents = setup.ae.encode(x[:1])[0][0]  # the mean of one image
    return ({"stage": "1: VAE-GAN autoencoder", "params": n_params(setup.ae, setup.disc),
             "flops_step": flops, "steps": steps, "cpu_s_step": seconds,
             "extra": float(encode.get_total_flops()) * const.N_IMAGES}, setup.ae, latents.shape)


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def stage2(const, cpu: torch.device, latent_shape) -> tuple[dict, torch.nn.Module]:
    """The latent UNet's step and its run length."""
    c = constants(LDMDiffusionMain, const)
    channels, size = latent_shape[0], latent_shape[-1]
    steps = c.EPOCHS * max(1, const.N_IMAGES // c.BATCH_SIZE)
    schedule = build_schedule(c.PREDICTION, c.SCHEDULE, c.TIMESTEPS, c.LOGIT_MEAN, c.LOGIT_STD)
    setup = build_diffusion(denoiser_args(c, channels, size, const.CLASSES), schedule, cpu,
                            prediction_type=c.PREDICTION, lr=c.LR, warmup_steps=c.WARMUP_STEPS,
                            total_steps=steps, label_dropout=c.LABEL_DROPOUT)
    z = torch.randn(c.BATCH_SIZE, channels, size, size)
    labels = torch.randint(0, const.CLASSES, (c.BATCH_SIZE,))
    flops, seconds = counted(lambda: diffusion_step(setup, z, labels), const.TIME_CPU)
    return ({"stage": "2: latent UNet (class-conditional)", "params": n_params(setup.model),
             "flops_step": flops, "steps": steps, "cpu_s_step": seconds, "extra": 0.0},
            setup.model)


def sampling(const, ae, unet, latent_shape) -> dict:
    """N_SAMPLES images: STEPS x 2 UNet passes (CFG: with and without the label), one decode."""
    c = constants(LDMEval, const)
    z = torch.randn(1, *latent_shape[-3:])
    with FlopCounterMode(display=False) as net, torch.no_grad():
        unet(z, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with FlopCounterMode(display=False) as decode, torch.no_grad():
        ae.decode(z)
    passes = 2 if c.GUIDANCE != 1 else 1
    per_image = c.STEPS * passes * net.get_total_flops() + decode.get_total_flops()
    return {"stage": f"sampling {const.N_SAMPLES:,} ({c.STEPS} steps, CFG {c.GUIDANCE:g})",
            "params": None, "flops_step": float(per_image), "steps": const.N_SAMPLES,
            "cpu_s_step": None, "extra": 0.0}


def table(rows: list[dict], rates) -> str:
    head = ("| stage | params | GFLOP per step | steps | PFLOP | this CPU s/step | "
            + " | ".join(f"h at {r:g} TFLOP/s" for r in rates) + " |")
    lines = [head, "|" + "---|" * (6 + len(rates))]
    for row in rows:
        total = row["flops_step"] * row["steps"] + row["extra"]
        row["pflop"] = total / 1e15
        cpu = "" if row["cpu_s_step"] is None else f"{row['cpu_s_step']:.1f}"
        params = "" if row["params"] is None else f"{row['params'] / 1e6:.1f}M"
        hours = " | ".join(f"{total / (r * 1e12) / 3600:.2f}" for r in rates)
        lines.append(f"| {row['stage']} | {params} | {row['flops_step'] / 1e9:,.1f} | "
                     f"{row['steps']:,} | {row['pflop']:.2f} | {cpu} | {hours} |")
    total = sum(r["pflop"] for r in rows) * 1e15
    lines.append(f"| **total** | | | | {total / 1e15:.2f} | | "
                 + " | ".join(f"**{total / (r * 1e12) / 3600:.2f}**" for r in rates) + " |")
    return "\n".join(lines)


def settings(name: str) -> str:
    """The recipe's constants per script, as a table."""
    lines = ["| script | constants the recipe sets |", "|---|---|"]
    for script, values in RECIPES[name].items():
        if script != "about":
            shown = ", ".join(f"`{k}={v!r}`" for k, v in values.items())
            lines.append(f"| {script} | {shown} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    const = resolve_constants(globals(), argv)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    first, ae, latent_shape = stage1(const, cpu)
    second, unet = stage2(const, cpu, latent_shape)
    rows = [first, second, sampling(const, ae, unet, latent_shape)]
    text = (f"{settings(const.RECIPE_NAME)}\n\nCost on {const.N_IMAGES:,} training images:\n\n"
            f"{table(rows, const.RATES)}")
    print(f"recipe {const.RECIPE_NAME}\n\n{text}")
    publish(const.RESULTS, f"recipe_cost_{const.RECIPE_NAME}", text,
            {"recipe": const.RECIPE_NAME, "rows": rows, "rates_tflops": list(const.RATES)},
            module=__name__, argv=argv, precision="fp32")
    return rows


if __name__ == "__main__":
    run_cli(main)
