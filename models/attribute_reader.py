"""The attribute reader: a small CNN trained on the captioned scenes' ground truth that reads
back what a generated scene shows (utils/scenes.READER_HEADS: the number of objects; one object's
shape, colour, size and cell; two objects' axis and each one's shape and colour, in place order),
so a text-to-image model's faithfulness to its prompt is a number.

Unlike the evaluator CNN it keeps where things are: its last feature map is flattened, not
averaged, so the cell and the relation are readable.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.evaluator import conv_block


class AttributeReader(nn.Module):
    """Three conv blocks (a 4x4 map at 32 px), a 256-d layer over the flattened map, and a
    linear head per attribute (`heads`: name -> number of values)."""

    def __init__(self, heads: dict[str, int], image_size: int = 32, channels: int = 3,
                 width: int = 32, feature_dim: int = 256):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"the reader needs an image size divisible by 8, got {image_size}")
        side = image_size // 8
        self.body = nn.Sequential(conv_block(channels, width), conv_block(width, 2 * width),
                                  conv_block(2 * width, 4 * width), nn.Flatten(),
                                  nn.Linear(4 * width * side * side, feature_dim), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for images in [-1, 1]."""
        h = self.body(x)
        return {name: head(h) for name, head in self.heads.items()}


def reader_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the attributes, each over the images it applies to (target
    -1: not applicable, as the cell of a two-object scene)."""
    total = torch.zeros((), device=next(iter(logits.values())).device)
    for name, out in logits.items():
        target = targets[name].to(out.device)
        if (target >= 0).any():
            total = total + F.cross_entropy(out.float(), target, ignore_index=-1)
    return total
