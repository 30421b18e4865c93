"""Text-to-image from scratch, stage 2 (LDM_run_scripts/TextToImageMain): what a run is built
from and how a finished run samples.

A run models the cached latents of an LDMAutoencoderMain run on the captioned scenes
(DATASET="scenes"), conditioned on captions drawn anew every epoch from each scene's ground truth
(utils.scenes.captions, seeded by the epoch: templates and synonyms vary), read by a word
tokenizer and a CLIP text transformer (models/text_to_image.py). The text transformer comes from
a TextEncoderMain run (TEXT_ENCODER "frozen": kept as pre-trained; "joint": trained further with
the UNet) or starts from scratch ("scratch": trained with the UNet only).

A finished run samples through the Stable Diffusion pipeline (train/stable_diffusion.py):
load_components gives its Components, so LDM_run_scripts.StableDiffusion --WEIGHTS=<run> and the
benchmarks use the same prompt encoding, text guidance, samplers and image-to-image as v1.5.
"""
from pathlib import Path

import torch

from train.inference import build_schedule, load_run
from train.latents import latent_batches
from train.sd_loading import load_components as load_v15
from train.stable_diffusion import Components, StableDiffusion
from utils.data import to_uint8
from utils.errors import UserError
from utils.runs import existing_runs, find_run, load_checkpoint
from utils.scenes import captions, sample_scenes
from utils.word_tokenizer import WordTokenizer

FAMILY = "t2i"
TEXT_ENCODERS = ("frozen", "joint", "scratch")


def text_encoder_run(save_root: str, which: str) -> dict:
    """A finished TextEncoderMain run's checkpoint (tokenizer, text_args, text weights)."""
    run = find_run(save_root, "text_encoder", which)
    state = load_checkpoint(run.checkpoint, "text_encoder")
    return {**state, "run": run.name}


def training_scenes(stage1, cache: dict) -> dict:
    """The ground truth of the cached latents' scenes, drawn again as the autoencoder's data set
    drew them (sample_scenes is a function of count, seed and split)."""
    if stage1.data.dataset != "scenes":
        raise UserError(f"{stage1.run.name} was trained on {stage1.data.dataset!r}; text-to-"
                        f"image needs captions: train LDMAutoencoderMain with --DATASET=scenes")
    scenes = sample_scenes(len(cache["labels"]), stage1.data.seed, "train")
    if not torch.equal(torch.as_tensor(scenes["shape"][:, 0]), cache["labels"].cpu()):
        raise UserError(f"{stage1.run.name}'s latent cache does not match the scenes it should "
                        f"hold; train the autoencoder again")
    return scenes


def caption_ids(tokenizer: WordTokenizer, scenes: dict, seed: int) -> torch.Tensor:
    """(N, L) token ids of one draw of the scenes' captions."""
    return tokenizer.encode_batch(captions(scenes, seed))


def caption_batches(cache: dict, scale: float, ids: torch.Tensor, batch_size: int,
                    device: torch.device):
    """One epoch of (scaled latent samples, their captions' ids), as latent_batches."""
    return latent_batches({**cache, "labels": ids}, scale, batch_size, device)


def model_args(const, tokenizer: WordTokenizer, text_args: dict, latent_channels: int) -> dict:
    """The TextConditionedUNet of the constants: SDUNet at BASE, CHANNEL_MULT, BLOCKS, attention
    (self and cross) at ATTENTION_LEVELS, over the text transformer's width."""
    unet = dict(in_channels=latent_channels, out_channels=latent_channels, base=const.BASE,
                channel_mult=tuple(const.CHANNEL_MULT), blocks=const.BLOCKS,
                attention_levels=tuple(const.ATTENTION_LEVELS), heads=const.HEADS,
                context_dim=text_args["width"], depth=1)
    return {"text_unet": dict(unet=unet, text=text_args, null_ids=tokenizer.null().tolist(),
                              frozen_text=const.TEXT_ENCODER == "frozen")}


def load_components(save_root: str, which: str, device: torch.device) -> Components:
    """A finished text-to-image run as the pipeline's Components (EMA weights, eval mode)."""
    loaded = load_run(save_root, FAMILY, which, device)
    state, net = loaded.state, loaded.nets["net"]
    stage1 = load_run(save_root, "ldm_autoencoder", state["autoencoder_run"], device)
    process = state["diffusion"]
    schedule = build_schedule(process["prediction"], process["schedule"], process["timesteps"],
                              process.get("logit_mean", 0.0), process.get("logit_std", 1.0))
    size = loaded.data.image_size
    config = state["config"]
    return Components(WordTokenizer.from_dict(state["tokenizer"]), net.text, net.unet,
                      stage1.nets["autoencoder"], [f"trained run {loaded.title}"],
                      schedule=schedule, prediction=process["prediction"],
                      latent_scale=state["scale_factor"],
                      defaults={"height": size, "width": size, "steps": config["SAMPLE_STEPS"],
                                "guidance": config["GUIDANCE"]})


@torch.no_grad()
def prompt_frame(net, autoencoder, tokenizer: WordTokenizer, schedule, prediction: str,
                 scale: float, prompts: list[str], const, size: int,
                 device: torch.device) -> torch.Tensor:
    """A model in training (its EMA network) sampled through the pipeline: one uint8 image per
    prompt at GUIDANCE with SAMPLER and SAMPLE_STEPS, from the noise of SEED."""
    parts = Components(tokenizer, net.text, net.unet, autoencoder, schedule=schedule,
                       prediction=prediction, latent_scale=scale)
    out = StableDiffusion(parts, device, torch.float32).generate(
        prompts, steps=const.SAMPLE_STEPS, guidance=const.GUIDANCE, sampler=const.SAMPLER,
        height=size, width=size, seed=const.SEED)
    return to_uint8(out.images)


def pipeline_components(weights: str, tokenizer: str | None, cleaning: str, save_root: str,
                        dtype: torch.dtype, lazy: bool) -> Components:
    """What StableDiffusion's WEIGHTS names: v1.5 files (a single file or a diffusers folder),
    or else a TextToImageMain run under save_root (name, number or latest). A path that does
    not exist is the v1.5 loader's one line."""
    path = Path(weights)
    if path.exists() or "/" in weights or path.suffix in (".safetensors", ".ckpt"):
        parts = load_v15(weights, tokenizer, dtype=dtype, lazy=lazy)
        parts.tokenizer.convention = cleaning
        return parts
    if not existing_runs(save_root, FAMILY):
        raise UserError(f"WEIGHTS={weights!r} is neither a v1.5 file or folder nor a "
                        f"TextToImageMain run (none under {Path(save_root).resolve()})")
    try:
        return load_components(save_root, weights, torch.device("cpu"))
    except UserError as err:
        raise UserError(f"WEIGHTS={weights!r} is not a v1.5 file or folder, and as a run: "
                        f"{err}") from None


def check_prompts(tokenizer, prompt: str, negative: str) -> None:
    """A tokenizer with a closed vocabulary (a trained run's) checks the prompts before any
    work: an empty prompt, too many words, unknown words or characters are one line (an empty
    negative prompt is the null caption). CLIP's tokenizer reads anything."""
    if hasattr(tokenizer, "check"):
        tokenizer.check(prompt)
        if negative:
            tokenizer.check(negative)
