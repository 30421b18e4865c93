"""Reading Stable Diffusion v1 weights: the original single-file layout (`.safetensors` or
`.ckpt`), whose tensors are named by component prefix.

    cond_stage_model.transformer.text_model.*   the CLIP text encoder (models/clip.py names)
    model.diffusion_model.*                      the UNet
    first_stage_model.*                          the VAE
    model_ema.*                                  EMA copies of the UNet (full checkpoints)

Nothing here downloads: a user points WEIGHTS at a file they have.
"""
from pathlib import Path

import torch

from utils.errors import UserError

TEXT_PREFIX = "cond_stage_model.transformer."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
_IGNORED = ("text_model.embeddings.position_ids",)  # a buffer some exports carry, not a weight


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint: safetensors for `.safetensors`, otherwise
    torch.load(weights_only=True), unwrapping a top-level "state_dict"."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"WEIGHTS {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as err:  # a truncated or foreign file: one line
        raise UserError(f"WEIGHTS {path} could not be read: {type(err).__name__}: {err}"
                        ) from None
    if not isinstance(state, dict):
        raise UserError(f"WEIGHTS {path} holds no tensors by name")
    return state


def component(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under prefix, with the prefix removed and ignorable buffers dropped."""
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if k not in _IGNORED}


def load_component(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load by name, strictly: a missing tensor, an unexpected one or a wrong shape is one line
    naming it."""
    own = module.state_dict()
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
