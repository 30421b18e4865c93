"""CLIP-style contrastive pre-training (Radford et al. 2021) at a small size: the project's CLIP
text transformer (models/clip.py) and a small image tower, each projected to a shared embedding
where an image and its caption should be nearest; the text transformer is then the text encoder
a text-to-image model conditions on.

    text:  the transformer's output at the <eos> token (CLIP pools at its end-of-text token),
           linearly projected;  image: a small CNN, globally pooled, linearly projected;
    loss:  symmetric cross-entropy over the batch's cosine similarities times a learned
           temperature exp(t), t initialised to log(1 / 0.07) and exp(t) capped at 100
           (Radford et al. 2021, sec. 2.5 and fig. 3).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.clip import CLIPTextEncoder
from models.evaluator import conv_block

EOS_ID = 2  # utils.word_tokenizer's <eos>
INIT_TEMPERATURE = 0.07  # Radford et al. 2021
MAX_LOGIT_SCALE = 100.0


def pooled_text(hidden: torch.Tensor, ids: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
    """The hidden state at each sequence's first <eos> token: (B, L, W) -> (B, W)."""
    position = (ids == eos_id).int().argmax(1)
    return hidden[torch.arange(len(ids), device=ids.device), position]


class ImageTower(nn.Module):
    """Three conv blocks and global average pooling: (B, C, H, W) -> (B, 4 * width)."""

    def __init__(self, channels: int = 3, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, width), conv_block(width, 2 * width),
                                  conv_block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ContrastivePair(nn.Module):
    """A text encoder and an image tower with their projections and the learned temperature."""

    def __init__(self, text: CLIPTextEncoder, image: ImageTower, embed_dim: int = 64):
        super().__init__()
        self.text, self.image = text, image
        width = text.text_model.final_layer_norm.normalized_shape[0]
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        self.image_projection = nn.Linear(image.out_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit-length caption embeddings."""
        return F.normalize(self.text_projection(pooled_text(self.text(ids), ids)), dim=-1)

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings."""
        return F.normalize(self.image_projection(self.image(x)), dim=-1)

    def logits(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, B) image-to-text similarities times the temperature."""
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale * self.embed_image(x) @ self.embed_text(ids).T


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """The mean of the image-to-text and text-to-image cross-entropies, pair i being class i."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
