"""One loader for every family's checkpoint: the networks rebuilt from its model_args with their
inference weights (eval mode, no optimizer), the data spec, and the checkpoint itself.

Each family's checkpoint is built by one function in its train/ module (gan_checkpoint,
vae_checkpoint, diffusion_checkpoint, autoencoder_checkpoint), which documents its keys.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from train.autoencoder import load_autoencoder_networks
from train.diffusion import load_diffusion_networks
from train.gan import load_gan
from train.vae import load_vae
from utils.data import DataSpec
from utils.errors import UserError
from utils.runs import Run, find_run, load_checkpoint

LOADERS = {"gan": load_gan, "vae": load_vae, "diffusion": load_diffusion_networks,
           "ldm": load_diffusion_networks, "ldm_autoencoder": load_autoencoder_networks}


@dataclass
class Loaded:
    """A trained run: where it lives, its checkpoint, its rebuilt networks and its data."""
    run: Run
    state: dict
    nets: dict[str, torch.nn.Module]
    data: DataSpec

    @property
    def title(self) -> str:
        return f"{self.run.name} (epoch {self.state['epoch']})"


def load_run(save_root: str | Path, family: str, which: str, device: torch.device) -> Loaded:
    """The run named `which` (or the latest with a checkpoint) of a family, rebuilt on device."""
    run = find_run(save_root, family, which)
    state = load_checkpoint(run.checkpoint, family)
    try:
        return Loaded(run, state, LOADERS[family](state, device), DataSpec.of(state))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # model_args a network cannot be built from, or a part of the dict missing
        raise UserError(f"checkpoint {run.checkpoint} cannot be rebuilt ({type(err).__name__}: "
                        f"{str(err).strip()[:100]}): it is damaged or was written by another "
                        f"version") from None
