"""The denoising UNet (Ho et al. 2020; Dhariwal & Nichol 2021) for pixels or latents."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (Attention, Downsample, ResBlock, Upsample, group_norm,
                           sinusoidal_embedding)


class UNet(nn.Module):
    """eps/x0/v/flow-velocity predictor: time embedding, residual levels with skip
    concatenation, attention at chosen resolutions, optional class embedding with one extra
    "null" class for CFG.

    With patch > 1 the input's patch x patch pixel blocks are folded into channels first
    (space-to-depth: 3x32x32 becomes 12x16x16 at patch 2) and the output unfolded the same way,
    so every level runs at 1/patch of the resolution and the full-resolution level, about half
    the work of DiffusionMain's UNet, is skipped (Hoogeboom et al. 2023 do this for
    high-resolution images; a DiT's patch embedding is the same fold). At 32x32 it trains
    faster per image but learns less from each (docs/studies/compare.md).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, base: int = 24,
                 channel_mult: tuple = (1, 2, 2), blocks: int = 1,
                 attention_resolutions: tuple = (8,), heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, out_channels: int | None = None, patch: int = 1):
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ValueError(f"patch {patch} must be a positive divisor of the size {image_size}")
        image_size //= patch
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"size {image_size} (after the patch) cannot be halved "
                             f"{len(channel_mult) - 1} times")
        emb = 4 * base
        self.base, self.num_classes, self.patch = base, num_classes, patch
        self.null_class = num_classes  # label index meaning "no class" (CFG's unconditional)
        self.time_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(num_classes + 1, emb) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels * patch ** 2, base, 3, padding=1)
        self.down, skips, ch, res = nn.ModuleList(), [base], base, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks):
                self.down.append(self._block(ch, base * mult, emb, dropout, res,
                                             attention_resolutions, heads))
                ch = base * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, dropout), Attention(ch, heads),
                                  ResBlock(ch, ch, emb, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks + 1):
                self.up.append(self._block(ch + skips.pop(), base * mult, emb, dropout, res,
                                           attention_resolutions, heads))
                ch = base * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, (out_channels or in_channels) * patch ** 2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the untrained model predicts 0
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _block(c_in, c_out, emb, dropout, res, attention_resolutions, heads) -> nn.ModuleList:
        layers = [ResBlock(c_in, c_out, emb, dropout)]
        if res in attention_resolutions:
            layers.append(Attention(c_out, heads))
        return nn.ModuleList(layers)

    @staticmethod
    def _run(layers, h, emb):
        for layer in layers if isinstance(layers, nn.ModuleList) else [layers]:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.base))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((len(x),), self.null_class, device=x.device)
            emb = emb + self.class_emb(labels)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers, Upsample):
                h = layers(h)
            else:
                h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out
