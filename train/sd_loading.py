"""Reading Stable Diffusion v1 weights into the project's modules: the original single file
(`.safetensors` through safetensors, `.ckpt` through torch.load(weights_only=True); EMA-only or
full, whose EMA UNet is used) or a diffusers folder, named through models/sd_weights.py's key
tables. Every problem (missing file, unreadable file, missing or unexpected tensor, wrong shape,
no tokenizer) is one UserError line naming it.
"""
from pathlib import Path

import torch

from models.clip import CLIPTextEncoder
from models.sd_unet import SDUNet
from models.sd_vae import SDVAE
from models.sd_weights import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, to_project_tensor,
                               unet_key_table, vae_key_table)
from train.stable_diffusion import Components
from utils.clip_tokenizer import CLIPTokenizer
from utils.errors import UserError

_IGNORED = ("text_model.embeddings.position_ids",)  # a buffer some exports carry, not a weight
_DIFFUSERS = {"text": ("text_encoder", "model"), "unet": ("unet", "diffusion_pytorch_model"),
              "vae": ("vae", "diffusion_pytorch_model")}  # component -> (folder, file stem)
FULL_SIZE = {"text": {}, "unet": {}, "vae": {}}  # constructor arguments: v1.5's (the defaults)


def read_state_dict(path: str | Path, prefixes: tuple[str, ...] = (),
                    dtype: torch.dtype | None = None, shapes_only: bool = False
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors for `.safetensors`, otherwise
    torch.load(weights_only=True, memory-mapped where the file allows), unwrapping a top-level
    "state_dict". prefixes: only the tensors whose names start with one of them (a safetensors
    file reads nothing else); dtype: each tensor converted as it is read, so that a component
    never sits in memory in two dtypes at once; shapes_only: meta tensors (names and shapes,
    no data read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"WEIGHTS: {path} does not exist")

    def wanted(key):
        return not prefixes or key.startswith(prefixes)

    def convert(value):
        if shapes_only:
            return torch.empty(value.shape, dtype=value.dtype, device="meta")
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path, wanted, convert, shapes_only)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (not zip) file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as err:  # a truncated or foreign file: one line
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(f"WEIGHTS: {path} could not be read as weights ({type(err).__name__}: "
                        f"{first})") from None
    if not isinstance(state, dict):
        raise UserError(f"WEIGHTS: {path} holds no tensors by name")
    return {k: convert(v) for k, v in state.items() if wanted(k)}


def _read_safetensors(path: Path, wanted, convert, shapes_only: bool, group_mb: int = 64
                      ) -> dict:
    """The wanted tensors of a .safetensors file, converted as they are read. The library
    memory-maps the file, and every page it touched counts as resident memory until the file is
    closed: it is reopened every `group_mb` megabytes, so a 4 GB file does not add 4 GB to the
    peak on top of the converted copies. shapes_only reads the header alone."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as file:
        keys = [k for k in file.keys() if wanted(k)]
        if shapes_only:
            return {k: torch.empty(file.get_slice(k).get_shape(), device="meta") for k in keys}
    out, done = {}, 0
    while done < len(keys):
        with safe_open(str(path), "pt") as file:
            read = 0
            while done < len(keys) and read < group_mb * 2 ** 20:
                value = file.get_tensor(keys[done])
                read += value.numel() * value.element_size()
                out[keys[done]] = convert(value)
                done += 1
    return out


def check_tensors(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], what: str
                  ) -> dict[str, torch.Tensor]:
    """`tensors` in `own`'s order, strictly: a missing tensor, an unexpected one or a wrong
    shape is one line naming it."""
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
    return {k: tensors[k] for k in own}


def load_component(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load by name, strictly (see check_tensors)."""
    module.load_state_dict(check_tensors(module.state_dict(), tensors, what))


def renamed(tensors: dict[str, torch.Tensor], table: dict[str, tuple[str, str]], column: int,
            own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` named in the original (column 0) or diffusers (column 1) layout under the
    project's names through its key table (an unknown name is kept, to be reported)."""
    known = {names[column] for names in table.values()}
    out = {k: v for k, v in tensors.items() if k not in known}
    for key, names in table.items():
        if names[column] in tensors:
            out[key] = to_project_tensor(tensors[names[column]], own[key])
    return out


def from_layout(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                table: dict[str, tuple[str, str]], column: int, what: str) -> None:
    """Load `tensors` named in the original or diffusers layout into the project model."""
    load_component(model, renamed(tensors, table, column, model.state_dict()), what)


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


def _read_diffusers(folder: Path, component: str, dtype: torch.dtype,
                    shapes_only: bool = False) -> dict:
    sub, stem = _DIFFUSERS[component]
    for suffix in (".safetensors", ".bin"):
        path = folder / sub / f"{stem}{suffix}"
        if path.is_file():
            return read_state_dict(path, dtype=dtype, shapes_only=shapes_only)
    raise UserError(f"WEIGHTS: the diffusers folder {folder} has no {sub}/{stem}.safetensors "
                    f"(or .bin)")


def folder_model_args(folder: Path) -> dict:
    """Constructor arguments from a diffusers folder's config.json files (a v1-style model of
    another size loads too); v1.5's sizes where a file is missing. A config.json that does not
    parse or lacks a size is one line naming it."""
    try:
        return _folder_model_args(folder)
    except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, AttributeError
            ) as err:
        raise UserError(f"WEIGHTS: a config.json in {folder} is not a diffusers v1 config this "
                        f"code reads ({type(err).__name__}: {str(err).strip()[:100]})") from None


def _folder_model_args(folder: Path) -> dict:
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


_WHAT = {"text": "text encoder", "unet": "UNet", "vae": "VAE"}
_EMA_PREFIX = "model_ema.diffusion_model"


def _project_tensors(weights: Path, name: str, own: dict, table: dict | None,
                     dtype: torch.dtype, shapes_only: bool = False
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One network's tensors (name: text, unet, vae) from WEIGHTS under the project's names,
    checked against `own` (its state dict, possibly on the meta device), and notes.
    shapes_only: meta tensors, to check a file without reading its data."""
    notes = []

    def read(prefix):
        return read_state_dict(weights, (prefix,), dtype, shapes_only)
    if weights.is_dir():
        tensors = _read_diffusers(weights, name, dtype, shapes_only)
        if name == "text" and not any(k.startswith("text_model.") for k in tensors):
            tensors = {"text_model." + k: v for k, v in tensors.items()}  # transformers >= 5
        elif name != "text":
            tensors = renamed(tensors, table, 1, own)
    elif name == "unet":
        ema = _ema_unet(read(_EMA_PREFIX), table)
        notes.append("UNet: EMA weights" if ema is not None else "UNet: the weights as stored")
        if ema is None:
            ema = _with_prefix(read(UNET_PREFIX), UNET_PREFIX)
        tensors = renamed(ema, table, 0, own)
    else:
        prefix = TEXT_PREFIX if name == "text" else VAE_PREFIX
        tensors = _with_prefix(read(prefix), prefix)
        tensors = tensors if name == "text" else renamed(tensors, table, 0, own)
    return check_tensors(own, tensors, _WHAT[name]), notes


def load_components(weights: str | Path, tokenizer: str | Path | None = None,
                    model_args: dict | None = None, dtype: torch.dtype = torch.float32,
                    lazy: bool = False) -> Components:
    """The four parts, weights loaded on the CPU in `dtype`. `weights`: a single-file checkpoint
    (EMA-only or full; a full one's EMA UNet is used) or a diffusers model folder; `tokenizer`:
    a vocabulary (needed for a single file, which holds none). model_args: the sizes (None:
    v1.5's, or a diffusers folder's own config.json). The networks are built on the meta device
    and given the file's tensors (no random initialisation, no second copy); lazy: every
    name and shape is checked (no data read), the networks stay on the meta device and are
    read when they run (see Components.materialize).
    """
    weights = Path(weights)
    if not weights.exists():
        raise UserError(f"WEIGHTS: {weights} does not exist")
    if weights.is_file() and tokenizer is None:
        raise UserError("TOKENIZER: a single-file checkpoint holds no vocabulary; point "
                        "TOKENIZER at a tokenizer folder (vocab.json + merges.txt) or at "
                        "CLIP's bpe_simple_vocab_16e6.txt.gz")
    vocabulary = CLIPTokenizer.load(tokenizer or weights)
    args = model_args or (folder_model_args(weights) if weights.is_dir() else FULL_SIZE)
    with torch.device("meta"):
        parts = {"text": CLIPTextEncoder(**args["text"]), "unet": SDUNet(**args["unet"]),
                 "vae": SDVAE(**args["vae"])}
    tables = {"text": None, "unet": unet_key_table(parts["unet"]),
              "vae": vae_key_table(parts["vae"])}
    own = {name: module.state_dict() for name, module in parts.items()}

    def source(name: str, as_dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return _project_tensors(weights, name, own[name], tables[name], as_dtype)[0]
    notes = []
    for name, module in parts.items():
        tensors, found = _project_tensors(weights, name, own[name], tables[name], dtype,
                                          shapes_only=lazy)
        notes += found
        if not lazy:
            module.load_state_dict(tensors, assign=True)
        del tensors
        module.eval().requires_grad_(False)
    return Components(vocabulary, parts["text"], parts["unet"], parts["vae"], notes, source)
