"""Reading Stable Diffusion v1 weights into the project's modules: the original single file
(`.safetensors` through safetensors, `.ckpt` through torch.load(weights_only=True); EMA-only or
full, whose EMA UNet is used) or a diffusers folder, named through models/sd_weights.py's key
tables. Every problem (missing file, unreadable file, missing or unexpected tensor, wrong shape,
no tokenizer) is one UserError line naming it.
"""
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.clip import CLIPTextEncoder
from models.sd_unet import SDUNet
from models.sd_vae import SDVAE
from models.sd_weights import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, to_project_tensor,
                               unet_key_table, vae_key_table)
from utils.clip_tokenizer import CLIPTokenizer
from utils.errors import UserError

_IGNORED = ("text_model.embeddings.position_ids",)  # a buffer some exports carry, not a weight
_DIFFUSERS = {"text": ("text_encoder", "model"), "unet": ("unet", "diffusion_pytorch_model"),
              "vae": ("vae", "diffusion_pytorch_model")}  # component -> (folder, file stem)
FULL_SIZE = {"text": {}, "unet": {}, "vae": {}}  # constructor arguments: v1.5's (the defaults)


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
