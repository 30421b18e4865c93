"""Stable Diffusion v1.5 from the project's own parts, with the published weights, or a
text-to-image model trained here from scratch (TextToImageMain), through the same pipeline.

    python -m LDM_run_scripts.StableDiffusion --WEIGHTS=v1-5-pruned-emaonly.safetensors \
        --TOKENIZER=tokenizer --PROMPT="a red fox in the snow"
    python -m LDM_run_scripts.StableDiffusion --WEIGHTS=stable-diffusion-v1-5 \
        --INIT_IMAGE=photo.png --STRENGTH=0.6 --PROMPT="an oil painting"
    python -m LDM_run_scripts.StableDiffusion --WEIGHTS=latest --N_IMAGES=4 \
        --PROMPT="a small red star in the top left corner"     # a TextToImageMain run

WEIGHTS is a v1.5 single-file checkpoint (.safetensors or .ckpt, EMA-only or full) or a
diffusers-format model folder; nothing is downloaded (docs/stable_diffusion.md: where to get
them). A WEIGHTS that is not a file or folder names a TextToImageMain run under SAVE_ROOT (name,
number or latest): its own size, steps and guidance replace HEIGHT, WIDTH, STEPS and GUIDANCE
unless they are typed, it samples on the grid of its own schedule, and its prompts use its
words. With
--TIMESTEP_SPACING=leading (v1.5's scheduler config) and --TEXT_CLEANING=transformers the
DDIM and DPM-Solver++ images equal diffusers' pipeline's for the same prompt, seed and steps.
Writes saved_plots/stable_diffusion/<run>/: image_<i>.png, grid.png, denoising_strip.png (the
decoded x0 prediction at evenly spaced steps), init_and_results.png (image-to-image),
config.json (everything needed to reproduce) and metrics.json (seconds per component and per
UNet step, peak memory).
"""

import torch

from models.grids import SD_DEFAULT_SPACING, SD_SPACINGS
from train.stable_diffusion import (StableDiffusion, denoising_strip, img2img_steps,
                                    load_init_image, peak_memory_mb, sd_device, sd_dtype)
from train.text_to_image import check_prompts, pipeline_components
from utils.clip_tokenizer import CONVENTIONS
from utils.config import (check_choice, check_positive, given_constants, resolve_constants,
                          save_config)
from utils.cli import run_cli
from utils.errors import UserError
from utils.plots import save_grid, save_labelled_grid
from utils.run_index import write_indexes
from utils.runs import new_run, write_json

WEIGHTS = None  # v1.5 single file (.safetensors / .ckpt) or a diffusers model folder
TOKENIZER = None  # vocab folder or bpe_simple_vocab_16e6.txt.gz (None: the folder's tokenizer/)
PROMPT = "a red fox in the snow, photograph"  # what to draw
NEGATIVE_PROMPT = ""  # the guidance's unconditional branch ("" is the empty prompt)
TEXT_CLEANING = "clip"  # clip (OpenAI CLIP's: ftfy, HTML entities) or transformers (its fast
#                         CLIPTokenizer's, as diffusers pipelines): utils/clip_tokenizer.py
INIT_IMAGE = None  # None: text-to-image; an image path: image-to-image
STRENGTH = 0.75  # image-to-image: the share of the STEPS grid run from the noised init (0-1]
STEPS = 30  # sampler steps (a trained run: its SAMPLE_STEPS unless given)
GUIDANCE = 7.5  # classifier-free guidance scale (1: none; a trained run: its own unless given)
SAMPLER = "dpmpp2m"  # ddim, ddpm, heun, dpmpp2m (the project's samplers)
TIMESTEP_SPACING = SD_DEFAULT_SPACING  # karras, leading (v1.5's config: diffusers' images),
#                                        trailing or linspace: the timesteps visited (models/grids)
HEIGHT = 512  # pixels, a multiple of 8 (a trained run: its image size unless given)
WIDTH = 512  # pixels, a multiple of 8 (a trained run: its image size unless given)
N_IMAGES = 1  # images drawn for the prompt
SEED = 0  # seeds the noise (drawn on the CPU: the same images on every device)
STRIP_STEPS = 6  # snapshots in the denoising strip (0: none)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, mps
PRECISION = "auto"  # auto (fp16 on CUDA, bf16 on CPUs that have it, else fp32), fp32, bf16, fp16
OFFLOAD = "none"  # none, or model: each network in memory only while it runs (peak memory)
SAVE_ROOT = "."  # saved_plots/ is created here (and a trained run's saved_models/ read)


def main(argv=None):
    const = resolve_constants(globals(), argv)
    if const.WEIGHTS is None:
        raise UserError("WEIGHTS is not set: point it at a Stable Diffusion v1.5 checkpoint "
                        "(docs/stable_diffusion.md: where to get one)")
    check_choice("SAMPLER", const.SAMPLER, ("ddim", "ddpm", "heun", "dpmpp2m"))
    check_choice("OFFLOAD", const.OFFLOAD, ("none", "model"))
    check_choice("TEXT_CLEANING", const.TEXT_CLEANING, CONVENTIONS)
    check_choice("TIMESTEP_SPACING", const.TIMESTEP_SPACING, SD_SPACINGS)
    if not 0 <= const.STRENGTH <= 1:
        raise UserError(f"STRENGTH={const.STRENGTH} must be in [0, 1]")
    device = sd_device(const.DEVICE)
    dtype = sd_dtype(const.PRECISION, device)
    lazy = const.OFFLOAD == "model" and device.type == "cpu"
    parts = pipeline_components(const.WEIGHTS, const.TOKENIZER, const.TEXT_CLEANING,
                                const.SAVE_ROOT, dtype, lazy)
    given = given_constants(argv)
    for name, value in parts.defaults.items():  # a trained run's own, unless typed
        if name.upper() not in given:
            setattr(const, name.upper(), value)
    check_positive(const, "STEPS", "HEIGHT", "WIDTH", "N_IMAGES")
    if const.INIT_IMAGE is not None:
        img2img_steps(const.STEPS, const.STRENGTH)
    check_prompts(parts.tokenizer, const.PROMPT, const.NEGATIVE_PROMPT)
    init = None if const.INIT_IMAGE is None else load_init_image(const.INIT_IMAGE, const.HEIGHT,
                                                                 const.WIDTH)
    # the run folder and its config before generating: an unwritable SAVE_ROOT stops here
    run = new_run(const.SAVE_ROOT, "stable_diffusion", "img2img" if init is not None else "txt2img")
    save_config(const, run.plots / "config.json")
    pipe = StableDiffusion(parts, device, dtype, const.OFFLOAD)
    result = pipe.generate(const.PROMPT, const.NEGATIVE_PROMPT, steps=const.STEPS,
                           guidance=const.GUIDANCE, sampler=const.SAMPLER, height=const.HEIGHT,
                           width=const.WIDTH, n_images=const.N_IMAGES, seed=const.SEED,
                           init_image=init, strength=const.STRENGTH,
                           snapshots=const.STRIP_STEPS, spacing=const.TIMESTEP_SPACING)
    write_outputs(run, const, pipe, result, init)
    write_indexes(run.plots)
    print(f"{result.seconds['unet_per_step']:.2f} s per UNet step on {device} "
          f"({str(dtype).replace('torch.', '')}); done: images in {run.plots}")
    return run, result


def write_outputs(run, const, pipe: StableDiffusion, result, init) -> None:
    """The images, the grid, the denoising strip, init beside results, metrics.json."""
    for i, image in enumerate(result.images):
        save_grid(image[None], run.plots / f"image_{i}.png", nrow=1)
    save_grid(result.images, run.plots / "grid.png", nrow=min(4, len(result.images)),
              title=const.PROMPT[:80])
    if result.frames:
        save_labelled_grid(denoising_strip(pipe, result), run.plots / "denoising_strip.png",
                           col_labels=[f"t={t}" for t, _, _ in result.frames],
                           title="predicted x0 while sampling")
    if init is not None:
        save_grid(torch.cat([init, result.images]), run.plots / "init_and_results.png",
                  nrow=1 + len(result.images),
                  title=f"init image, then the STRENGTH {const.STRENGTH:g} results")
    metrics = {"seconds": result.seconds, **peak_memory_mb(pipe.device),
               "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
               "notes": pipe.parts.notes}
    write_json(run.plots / "metrics.json", metrics)


if __name__ == "__main__":
    run_cli(main)
