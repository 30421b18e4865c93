"""Stable Diffusion v1.5 inference built from the project's parts: reading the published weights
(the original single file or a diffusers folder), the CLIP tokenizer and text encoder, the
cross-attention UNet, the VAE, the scaled-linear NoiseSchedule and the project's samplers with
text classifier-free guidance; text-to-image and image-to-image. The same pipeline samples a
text-to-image model trained here from scratch (train/text_to_image.py builds its Components:
its word tokenizer, text transformer, UNet, the LDM autoencoder, and the schedule and
prediction it was trained with).

The denoiser is the project's Denoiser (epsilon prediction for SD) whose "labels" are the prompt's
text embeddings; guidance evaluates the UNet on [prompt, negative prompt] in one batch and
returns eps_u + w (eps_c - eps_u) (Ho & Salimans 2022). Image-to-image encodes the init image,
draws z from the posterior, and starts the sampler from it noised by the forward process to the
step at STRENGTH of the way up the sampler's grid.
"""
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch

from models.diffusion import Denoiser, NoiseSchedule, q_sample
from models.grids import SD_DEFAULT_SPACING, sd_timesteps, spaced_timesteps
from models.samplers import sample
from models.clip import CLIPTextEncoder
from models.sd_unet import SDUNet
from models.sd_vae import SCALE_FACTOR, SDVAE
from utils.clip_tokenizer import CLIPTokenizer
from utils.image_folder import image_decode_errors
from utils.device import bf16_is_fast, synchronize
from utils.errors import UserError


@dataclass
class Components:
    """The tokenizer and the three networks. `source(name, dtype)` reads a network's weights
    ("text", "unet" or "vae") from WEIGHTS again, under the project's names: with it a network
    can wait on the meta device (no memory) until it runs (see `materialize`)."""
    tokenizer: CLIPTokenizer
    text: CLIPTextEncoder
    unet: SDUNet
    vae: SDVAE
    notes: list[str] = field(default_factory=list)
    source: Callable[[str, torch.dtype], dict[str, torch.Tensor]] | None = None
    # a model trained here (train/text_to_image.py) says how it samples; None: SD v1's own
    # (the scaled-linear schedule, epsilon, 0.18215, SD's timestep spacings)
    schedule: Any = None  # NoiseSchedule or FlowSchedule
    prediction: str = "epsilon"
    latent_scale: float | None = None  # None: SD's SCALE_FACTOR
    defaults: dict = field(default_factory=dict)  # size, steps, guidance it samples best at

    @property
    def factor(self) -> int:
        """The autoencoder's downsampling factor (8 for SD's VAE)."""
        return getattr(self.vae, "factor", None) or 2 ** (len(self.vae.decoder.up) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.conv_in.in_channels

    def materialize(self, name: str, dtype: torch.dtype) -> None:
        """Give a network on the meta device its weights (from `source`) on the CPU."""
        module = getattr(self, name)
        module.load_state_dict(self.source(name, dtype), assign=True)
        module.eval().requires_grad_(False)

    def release(self, name: str) -> None:
        """Back to the meta device: the network's weights are freed."""
        getattr(self, name).to("meta")


def sd_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The weights' dtype: auto is fp16 on CUDA, bf16 where the CPU runs it natively, else fp32
    (never fp16 on a CPU)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise UserError(f"PRECISION={precision!r} is not one of 'auto', 'fp32', 'bf16', 'fp16'")
    if table[precision] == torch.float16 and device.type == "cpu":
        raise UserError("PRECISION='fp16' is for GPUs; on a CPU use 'bf16' or 'fp32'")
    return table[precision]


@dataclass
class Generated:
    """What a generation returns: decoded images in [-1, 1] (CPU, fp32), the final latents,
    the sampler's snapshots (t, x_t, predicted x0 latents), and seconds per component."""
    images: torch.Tensor
    latents: torch.Tensor
    frames: list
    seconds: dict


class StableDiffusion:
    """Text-to-image and image-to-image with a Components on `device` in `dtype`. offload
    "model": each network is on the device only while it runs. On a GPU the others wait in
    CPU memory; on a CPU they wait in the weights file (on the meta device, read again when they
    run), so that peak memory is about the largest network's."""

    def __init__(self, parts: Components, device: torch.device, dtype: torch.dtype,
                 offload: str = "none"):
        if offload not in ("none", "model"):
            raise UserError(f"OFFLOAD={offload!r} is not one of 'none', 'model'")
        self.parts, self.device, self.dtype, self.offload = parts, device, dtype, offload
        # SD v1's training schedule, or the one a model trained here was trained on
        self.schedule = parts.schedule or NoiseSchedule("scaled_linear", 1000)
        self.latent_scale = parts.latent_scale or SCALE_FACTOR
        self.from_file = offload == "model" and device.type == "cpu" and parts.source is not None
        for name in ("text", "unet", "vae"):
            module = getattr(parts, name)
            if self.from_file:
                parts.release(name)
                continue
            if next(module.parameters()).is_meta:  # loaded lazily: read it now
                parts.materialize(name, dtype)
            module.to(dtype=dtype, device="cpu" if offload == "model" else device)

    @contextlib.contextmanager
    def _running(self, name: str, label: str, seconds: dict):
        """Time a network (name: text, unet, vae) under `label`; offloading, bring it to the
        device for the run only (reading its weights is timed as weights_read)."""
        module = getattr(self.parts, name)
        if self.from_file:
            started = time.perf_counter()
            self.parts.materialize(name, self.dtype)
            seconds["weights_read"] = seconds.get("weights_read", 0.0) + (
                time.perf_counter() - started)
        elif self.offload == "model":
            module.to(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        try:
            yield module
        finally:
            synchronize(self.device)
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started
            if self.from_file:
                self.parts.release(name)
            elif self.offload == "model":
                module.to("cpu")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], seconds: dict) -> torch.Tensor:
        """(B, L, width) text embeddings: the final LayerNorm's output ((B, 77, 768) for SD)."""
        ids = self.parts.tokenizer(prompts).to(self.device)
        with self._running("text", "text_encoder", seconds) as text:
            return text(ids)

    def denoiser(self, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> Denoiser:
        """The Denoiser with text guidance out_u + w (out_c - out_u) on the network's output
        (epsilon for SD; for a flow or v model the same combination of its output is the same
        combination of its eps and x0, both being linear in it); labels are ignored (the
        prompt is fixed here)."""
        unet = self.parts.unet

        def guided(x, t, labels):
            inputs = x.to(self.dtype)
            if guidance == 1.0:
                return unet(inputs, t, cond).float()
            out = unet(torch.cat([inputs, inputs]), torch.cat([t, t]),
                       torch.cat([cond, uncond])).float()
            out_c, out_u = out.chunk(2)
            return out_u + guidance * (out_c - out_u)
        return Denoiser(guided, self.schedule, self.parts.prediction)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, generator: torch.Generator, seconds: dict
                     ) -> torch.Tensor:
        """Scaled latents z ~ q(z | x) * scale (SD: 0.18215) of [-1, 1] images (B, C, H, W)."""
        with self._running("vae", "vae_encode", seconds) as vae:
            mean, logvar = vae.encode(image.to(self.device, self.dtype))
        noise = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean.float() + (0.5 * logvar.float()).exp() * noise) * self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seconds: dict) -> torch.Tensor:
        with self._running("vae", "vae_decode", seconds) as vae:
            images = vae.decode((latents / self.latent_scale).to(self.dtype))
        return images.float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def generate(self, prompt: str | list[str], negative: str = "", *, steps: int = 50,
                 guidance: float = 7.5, sampler: str = "ddim", height: int = 512,
                 width: int = 512, n_images: int = 1, seed: int = 0,
                 init_image: torch.Tensor | None = None, strength: float = 0.8,
                 snapshots: int = 0, spacing: str = SD_DEFAULT_SPACING) -> Generated:
        """Sample n_images for the prompt (a list of prompts: one image each). Noise is drawn
        on the CPU from one generator seeded with `seed` (the same images on every device);
        image-to-image draws the posterior sample first, then the forward-process noise, and
        runs the tail of the text-to-image grid. `spacing`: SD's timestep grid (models.grids;
        leading, v1.5's scheduler config, visits what diffusers' v1.5 pipeline visits and gives
        its images); a model trained here visits the project's grid for its schedule."""
        prompts = [prompt] * n_images if isinstance(prompt, str) else list(prompt)
        n_images = len(prompts)
        factor = self.parts.factor  # 8 for SD's VAE
        if height % factor or width % factor:
            raise UserError(f"HEIGHT and WIDTH must be multiples of {factor}, got "
                            f"{height}x{width}")
        seconds, generator = {}, torch.Generator().manual_seed(seed)
        context = self.encode_prompts(prompts + [negative] * n_images, seconds)
        cond, uncond = context.chunk(2)
        shape = (n_images, self.parts.latent_channels, height // factor, width // factor)
        sd = self.parts.schedule is None
        grid = (sd_timesteps(self.schedule.alphas_cumprod, steps, spacing, sampler) if sd
                else spaced_timesteps(self.schedule, steps))
        if init_image is None:
            x = torch.randn(shape, generator=generator).to(self.device)
        else:
            z0 = self.encode_image(init_image.expand(n_images, -1, -1, -1), generator, seconds)
            grid = grid[steps - img2img_steps(steps, strength):]  # as diffusers' img2img
            noise = torch.randn(z0.shape, generator=generator).to(self.device)
            x = q_sample(self.schedule, z0, torch.full((n_images,), grid[0],
                                                       device=self.device), noise)
        denoiser = self.denoiser(cond, uncond, guidance)
        # DDIM's last step lands on alpha_bar[0], not 1 (v1.5's set_alpha_to_one False)
        extra = {"last_t": 0} if sampler == "ddim" and sd else {}
        with self._running("unet", "unet", seconds):
            out = sample(denoiser, x, sampler, len(grid), timesteps=grid, snapshots=snapshots,
                         generator=generator, **extra)
        seconds["unet_per_step"] = seconds["unet"] / len(grid)
        return Generated(self.decode(out.x, seconds), out.x, out.frames, seconds)


def img2img_steps(steps: int, strength: float) -> int:
    """The denoising steps image-to-image runs: int(steps * strength), the tail of the
    text-to-image grid (as diffusers' img2img); a strength that leaves none is one line."""
    if not 0 < strength <= 1:
        raise UserError(f"STRENGTH={strength} must be in (0, 1] for image-to-image")
    run = int(steps * strength)
    if run < 1:
        raise UserError(f"STRENGTH={strength} with STEPS={steps} leaves no denoising step "
                        f"(int({steps} x {strength}) = 0); raise STRENGTH to at least "
                        f"{1 / steps:.3g} or STEPS")
    return run


def sd_device(name: str) -> torch.device:
    """DEVICE: auto is CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    from utils.device import resolve_device
    return resolve_device(name)


def load_init_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as a (1, 3, HEIGHT, WIDTH) tensor in [-1, 1] (resized with Lanczos)."""
    from PIL import Image
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB").resize((width, height), Image.LANCZOS)
    except image_decode_errors() as err:
        raise UserError(f"INIT_IMAGE {path}: not a readable image ({type(err).__name__}: "
                        f"{str(err).strip()[:120]})") from None
    array = torch.from_numpy(np.asarray(image, dtype=np.float32))  # (H, W, 3)
    return (array.permute(2, 0, 1)[None] / 127.5 - 1).contiguous()


def peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory of this process (Linux: VmHWM of its own address space, which,
    unlike getrusage's maxrss, does not inherit the parent's peak across fork and exec), and the
    GPU's peak allocation on CUDA."""
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    out = {"peak_rss_mb": peak}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def denoising_strip(pipe: StableDiffusion, result: Generated, rows: int = 2) -> torch.Tensor:
    """The decoded x0 predictions of the first `rows` images at each snapshot: (R, S, 3, H, W)."""
    columns = [pipe.decode(x0[:rows], {}) for _, _, x0 in result.frames]
    return torch.stack(columns, dim=1)
