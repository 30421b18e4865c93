"""The DCGAN's figures, drawn from a run's progression frames and metrics records (by the loop
each epoch and by evalGan from a checkpoint)."""
from pathlib import Path

import torch

from utils.plots import save_curves, save_progression

LOSS_PANELS = [("losses", ["train_d_loss", "train_g_loss", "test_d_loss", "test_g_loss",
                           "train_r1"]),
               ("discriminator outputs", ["train_d_real", "train_d_fake", "test_d_real",
                                          "test_d_fake"])]


def write_figures(folder: Path, frames: list[torch.Tensor], records: list[dict], name: str
                  ) -> None:
    """The progression grid (fixed latents across epochs) and the loss curves."""
    if frames:
        save_progression(frames, folder / "progression.png",
                         title="Generator on fixed latents across training")
    if records:  # a run whose metrics.jsonl is missing or cut short still gets its samples
        save_curves(records, LOSS_PANELS, folder / "losses.png", title=f"DCGAN {name}")
    else:
        print(f"note: {name} has no readable metrics.jsonl records; no losses.png")
