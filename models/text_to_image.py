"""A text-to-image denoiser trained from scratch: Stable Diffusion's cross-attention UNet
(models/sd_unet.py) at a CPU size, conditioned on the token-wise output of the project's CLIP
text transformer (models/clip.py) for a caption's token ids (utils/word_tokenizer.py), as
Stable Diffusion conditions on CLIP's last hidden states (Rombach et al. 2022, sec. 3.3).

Its "labels" are token ids (B, L), so the diffusion loop's label dropout for classifier-free
guidance (Ho & Salimans 2022) replaces a dropped caption by `null_class`, the empty caption's
ids; no ids at all (held-out losses) mean the empty caption too. The text transformer is either
trained with the UNet ("joint") or frozen after contrastive pre-training ("frozen": no
gradients reach it, and its weights stay the pre-trained ones).
"""
import torch
import torch.nn as nn

from models.clip import CLIPTextEncoder
from models.sd_unet import SDUNet


class TextConditionedUNet(nn.Module):
    """eps/v/velocity(x_t, t, token ids): SDUNet(x_t, t, CLIPTextEncoder(ids))."""

    def __init__(self, unet: dict, text: dict, null_ids: list[int], frozen_text: bool = False):
        super().__init__()
        self.unet = SDUNet(**unet)
        self.text = CLIPTextEncoder(**text)
        if self.unet.mid_attn.transformer_blocks[0].attn2.to_k.in_features != text["width"]:
            raise ValueError(f"the UNet's context_dim must be the text width {text['width']}")
        self.register_buffer("null_class", torch.tensor(null_ids, dtype=torch.long),
                             persistent=False)
        self.frozen_text = frozen_text
        if frozen_text:
            self.text.requires_grad_(False)
        self.num_classes = len(null_ids)  # truthy: the loop's label dropout applies

    def train(self, mode: bool = True) -> "TextConditionedUNet":
        super().train(mode)
        if self.frozen_text:
            self.text.eval()
        return self

    def context(self, ids: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The text transformer's output for ids (None: the empty caption for every image)."""
        if ids is None:
            ids = self.null_class.expand(batch, -1)
        return self.text(ids)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.unet(x, t, self.context(ids, len(x)))
