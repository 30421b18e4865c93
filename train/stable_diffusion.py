"""Stable Diffusion v1.5 inference built from the project's parts: reading the published weights
(the original single file or a diffusers folder), the CLIP tokenizer and text encoder, the
cross-attention UNet, the VAE, the scaled-linear NoiseSchedule and the project's samplers with
text classifier-free guidance; text-to-image and image-to-image.

The denoiser is the project's Denoiser (epsilon prediction) whose "labels" are the prompt's
text embeddings; guidance evaluates the UNet on [prompt, negative prompt] in one batch and
returns eps_u + w (eps_c - eps_u) (Ho & Salimans 2022). Image-to-image encodes the init image,
draws z from the posterior, and starts the sampler from it noised by the forward process to the
step at STRENGTH of the way up the sampler's grid.
"""
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.clip import CLIPTextEncoder
from models.diffusion import Denoiser, NoiseSchedule, q_sample
from models.samplers import sample, timestep_subset
from models.sd_unet import SDUNet
from models.sd_vae import SCALE_FACTOR, SDVAE
from models.sd_weights import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, to_project_tensor,
                               unet_key_table, vae_key_table)
from utils.clip_tokenizer import CLIPTokenizer
from utils.device import bf16_is_fast, synchronize
from utils.errors import UserError

_IGNORED = ("text_model.embeddings.position_ids",)  # a buffer some exports carry, not a weight
_DIFFUSERS = {"text": ("text_encoder", "model"), "unet": ("unet", "diffusion_pytorch_model"),
              "vae": ("vae", "diffusion_pytorch_model")}  # component -> (folder, file stem)
FULL_SIZE = {"text": {}, "unet": {}, "vae": {}}  # constructor arguments: v1.5's (the defaults)


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file: safetensors for `.safetensors`, otherwise
    torch.load(weights_only=True), unwrapping a top-level "state_dict"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"WEIGHTS: {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as err:  # a truncated or foreign file: one line
        raise UserError(f"WEIGHTS: {path} could not be read ({type(err).__name__}: {err})"
                        ) from None
    if not isinstance(state, dict):
        raise UserError(f"WEIGHTS: {path} holds no tensors by name")
    return state


def load_component(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load by name, strictly: a missing tensor, an unexpected one or a wrong shape is one line
    naming it."""
    own = module.state_dict()
    tensors = {k: v for k, v in tensors.items() if k not in _IGNORED}
    missing = [k for k in own if k not in tensors]
    if missing:
        raise UserError(f"WEIGHTS: the {what} is missing {len(missing)} tensor(s), "
                        f"e.g. {missing[0]}")
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise UserError(f"WEIGHTS: {what} tensor {key} has shape "
                            f"{tuple(tensors[key].shape)}, expected {tuple(value.shape)}")
    extra = [k for k in tensors if k not in own]
    if extra:
        raise UserError(f"WEIGHTS: the {what} has {len(extra)} unexpected tensor(s), "
                        f"e.g. {extra[0]}")
    module.load_state_dict({k: tensors[k] for k in own})


def from_layout(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                table: dict[str, tuple[str, str]], column: int, what: str) -> None:
    """Load `tensors` named in the original (column 0) or diffusers (column 1) layout into the
    project model through its key table, strictly."""
    own = model.state_dict()
    known = {names[column] for names in table.values()}
    renamed = {k: v for k, v in tensors.items() if k not in known}  # unexpected: own name
    for key, names in table.items():
        if names[column] in tensors:
            renamed[key] = to_project_tensor(tensors[names[column]], own[key])
    load_component(model, renamed, what)


def _with_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _ema_unet(state: dict, table: dict) -> dict | None:
    """The UNet's EMA weights of a full training checkpoint (model_ema.diffusion_model<key
    without dots>), named as the original layout names the UNet; None without them."""
    ema = {}
    for original, _ in table.values():
        key = "model_ema.diffusion_model" + original.replace(".", "")
        if key not in state:
            return None
        ema[original] = state[key]
    return ema


@dataclass
class Components:
    tokenizer: CLIPTokenizer
    text: CLIPTextEncoder
    unet: SDUNet
    vae: SDVAE
    notes: list[str] = field(default_factory=list)


def _read_diffusers(folder: Path, component: str) -> dict:
    sub, stem = _DIFFUSERS[component]
    for suffix in (".safetensors", ".bin"):
        path = folder / sub / f"{stem}{suffix}"
        if path.is_file():
            return read_state_dict(path)
    raise UserError(f"WEIGHTS: the diffusers folder {folder} has no {sub}/{stem}.safetensors "
                    f"(or .bin)")


def folder_model_args(folder: Path) -> dict:
    """Constructor arguments from a diffusers folder's config.json files (a v1-style model of
    another size loads too); v1.5's sizes where a file is missing."""
    import json

    def config(sub):
        path = folder / sub / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    args = {k: dict(v) for k, v in FULL_SIZE.items()}
    text, unet, vae = config("text_encoder"), config("unet"), config("vae")
    if text:
        args["text"] = dict(vocab=text["vocab_size"], width=text["hidden_size"],
                            layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                            hidden=text["intermediate_size"],
                            positions=text["max_position_embeddings"])
    if unet:
        widths = unet["block_out_channels"]
        heads = unet["attention_head_dim"]  # diffusers' v1 configs store the head count here
        args["unet"] = dict(
            in_channels=unet["in_channels"], out_channels=unet["out_channels"], base=widths[0],
            channel_mult=tuple(w // widths[0] for w in widths), blocks=unet["layers_per_block"],
            attention_levels=tuple(i for i, kind in enumerate(unet["down_block_types"])
                                   if "CrossAttn" in kind),
            heads=heads if isinstance(heads, int) else heads[0],
            context_dim=unet["cross_attention_dim"])
    if vae:
        widths = vae["block_out_channels"]
        args["vae"] = dict(channels=vae["in_channels"], base=widths[0],
                           mult=tuple(w // widths[0] for w in widths),
                           blocks=vae["layers_per_block"], z=vae["latent_channels"])
    return args


def load_components(weights: str | Path, tokenizer: str | Path | None = None,
                    model_args: dict | None = None) -> Components:
    """The four parts, weights loaded, on the CPU in fp32. `weights`: a single-file checkpoint
    (EMA-only or full; a full one's EMA UNet is used) or a diffusers model folder; `tokenizer`:
    a vocabulary (needed for a single file, which holds none). model_args: the sizes (None:
    v1.5's, or a diffusers folder's own config.json)."""
    weights = Path(weights)
    args = model_args or (folder_model_args(weights) if weights.is_dir() else FULL_SIZE)
    parts = {"text": CLIPTextEncoder(**args["text"]), "unet": SDUNet(**args["unet"]),
             "vae": SDVAE(**args["vae"])}
    tables = {"unet": unet_key_table(parts["unet"]), "vae": vae_key_table(parts["vae"])}
    notes = []
    if weights.is_dir():
        text = _read_diffusers(weights, "text")
        if not any(k.startswith("text_model.") for k in text):  # saved by transformers >= 5
            text = {"text_model." + k: v for k, v in text.items()}
        load_component(parts["text"], text, "text encoder")
        for name in ("unet", "vae"):
            from_layout(parts[name], _read_diffusers(weights, name), tables[name], 1, name)
        vocabulary = tokenizer or weights
    else:
        state = read_state_dict(weights)
        load_component(parts["text"], _with_prefix(state, TEXT_PREFIX), "text encoder")
        unet = _ema_unet(state, tables["unet"])
        notes.append("UNet: EMA weights" if unet is not None else "UNet: the weights as stored")
        unet = unet if unet is not None else _with_prefix(state, UNET_PREFIX)
        from_layout(parts["unet"], unet, tables["unet"], 0, "UNet")
        from_layout(parts["vae"], _with_prefix(state, VAE_PREFIX), tables["vae"], 0, "VAE")
        if tokenizer is None:
            raise UserError("TOKENIZER: a single-file checkpoint holds no vocabulary; point "
                            "TOKENIZER at a tokenizer folder (vocab.json + merges.txt) or at "
                            "CLIP's bpe_simple_vocab_16e6.txt.gz")
        vocabulary = tokenizer
    for module in parts.values():
        module.eval().requires_grad_(False)
    return Components(CLIPTokenizer.load(vocabulary), parts["text"], parts["unet"],
                      parts["vae"], notes)


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
    "model" keeps each component on the CPU except while it runs (on a GPU, peak memory is one
    component; on a CPU it changes nothing)."""

    def __init__(self, parts: Components, device: torch.device, dtype: torch.dtype,
                 offload: str = "none"):
        if offload not in ("none", "model"):
            raise UserError(f"OFFLOAD={offload!r} is not one of 'none', 'model'")
        self.parts, self.device, self.dtype, self.offload = parts, device, dtype, offload
        self.schedule = NoiseSchedule("scaled_linear", 1000)  # SD v1's training schedule
        for module in (parts.text, parts.unet, parts.vae):
            module.to(dtype=dtype, device="cpu" if offload == "model" else device)

    @contextlib.contextmanager
    def _running(self, module: torch.nn.Module, name: str, seconds: dict):
        """Time a component (and, offloading, move it to the device only for its run)."""
        if self.offload == "model":
            module.to(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        try:
            yield module
        finally:
            synchronize(self.device)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            if self.offload == "model":
                module.to("cpu")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], seconds: dict) -> torch.Tensor:
        """(B, 77, 768) text embeddings: the final LayerNorm's output."""
        ids = self.parts.tokenizer(prompts).to(self.device)
        with self._running(self.parts.text, "text_encoder", seconds) as text:
            return text(ids)

    def denoiser(self, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> Denoiser:
        """The epsilon-prediction Denoiser with text guidance eps_u + w (eps_c - eps_u); its
        labels are ignored (the prompt is fixed here)."""
        unet = self.parts.unet

        def guided(x, t, labels):
            inputs = x.to(self.dtype)
            if guidance == 1.0:
                return unet(inputs, t, cond).float()
            out = unet(torch.cat([inputs, inputs]), torch.cat([t, t]),
                       torch.cat([cond, uncond])).float()
            out_c, out_u = out.chunk(2)
            return out_u + guidance * (out_c - out_u)
        return Denoiser(guided, self.schedule, "epsilon")

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, generator: torch.Generator, seconds: dict
                     ) -> torch.Tensor:
        """Scaled latents z ~ q(z | x) * 0.18215 of [-1, 1] images (B, 3, H, W)."""
        with self._running(self.parts.vae, "vae_encode", seconds) as vae:
            mean, logvar = vae.encode(image.to(self.device, self.dtype))
        noise = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean.float() + (0.5 * logvar.float()).exp() * noise) * SCALE_FACTOR

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, seconds: dict) -> torch.Tensor:
        with self._running(self.parts.vae, "vae_decode", seconds) as vae:
            images = vae.decode((latents / SCALE_FACTOR).to(self.dtype))
        return images.float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def generate(self, prompt: str, negative: str = "", *, steps: int = 50,
                 guidance: float = 7.5, sampler: str = "ddim", height: int = 512,
                 width: int = 512, n_images: int = 1, seed: int = 0,
                 init_image: torch.Tensor | None = None, strength: float = 0.8,
                 snapshots: int = 0, first_t: int | None = None) -> Generated:
        """Sample n_images for the prompt. Noise is drawn on the CPU from one generator seeded
        with `seed` (the same images on every device); image-to-image draws the posterior
        sample first, then the forward-process noise. first_t is the grid's noisiest step
        (None: T - 1; diffusers' "leading" grids start lower, at T - T / steps)."""
        factor = 2 ** (len(self.parts.vae.decoder.up) - 1)  # 8 for SD's VAE
        if height % factor or width % factor:
            raise UserError(f"HEIGHT and WIDTH must be multiples of {factor}, got "
                            f"{height}x{width}")
        seconds, generator = {}, torch.Generator().manual_seed(seed)
        context = self.encode_prompts([prompt] * n_images + [negative] * n_images, seconds)
        cond, uncond = context.chunk(2)
        shape = (n_images, 4, height // factor, width // factor)
        start_t, run_steps = first_t, steps
        if init_image is None:
            x = torch.randn(shape, generator=generator).to(self.device)
        else:
            z0 = self.encode_image(init_image.expand(n_images, -1, -1, -1), generator, seconds)
            run_steps = int(steps * strength)  # the tail of the text-to-image grid
            if run_steps == 0:
                return Generated(self.decode(z0, seconds), z0, [], seconds)
            start_t = timestep_subset(self.schedule.timesteps, steps, first_t)[steps - run_steps]
            noise = torch.randn(z0.shape, generator=generator).to(self.device)
            x = q_sample(self.schedule, z0, torch.full((n_images,), start_t,
                                                       device=self.device), noise)
        denoiser = self.denoiser(cond, uncond, guidance)
        with self._running(self.parts.unet, "unet", seconds):
            out = sample(denoiser, x, sampler, run_steps, start_t=start_t, snapshots=snapshots,
                         generator=generator)
        seconds["unet_per_step"] = seconds["unet"] / max(run_steps, 1)
        return Generated(self.decode(out.x, seconds), out.x, out.frames, seconds)


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
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(path).convert("RGB").resize((width, height), Image.LANCZOS)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"INIT_IMAGE {path}: not a readable image ({type(err).__name__})"
                        ) from None
    array = torch.tensor(list(image.getdata()), dtype=torch.float32).view(height, width, 3)
    return (array.permute(2, 0, 1)[None] / 127.5 - 1).contiguous()


def peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory of this process, and the GPU's peak allocation on CUDA."""
    import resource
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def denoising_strip(pipe: StableDiffusion, result: Generated, rows: int = 2) -> torch.Tensor:
    """The decoded x0 predictions of the first `rows` images at each snapshot: (R, S, 3, H, W)."""
    columns = [pipe.decode(x0[:rows], {}) for _, _, x0 in result.frames]
    return torch.stack(columns, dim=1)
