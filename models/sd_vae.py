"""Stable Diffusion v1's VAE (the KL autoencoder of Rombach et al. 2022, f = 8): base 128,
multipliers (1, 2, 4, 4), 2 residual blocks per level (3 in the decoder), one attention block in
the middle, 4 latent channels, 1x1 "quant" convolutions around the latent, latents scaled by
0.18215 for the diffusion model.

It is its own module rather than a configuration of models/autoencoder.py: SD's downsampling
pads only the right and bottom edges before a stride-2 convolution without padding, its decoder
has one more residual block per level than its encoder, and its GroupNorms use eps 1e-6. The
residual blocks are the project's ResBlock (no time embedding); the attention is the project's
single-head spatial self-attention written with separate q, k, v convolutions, as SD stores them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import ResBlock, Upsample, group_norm

SCALE_FACTOR = 0.18215  # latents * SCALE_FACTOR have about unit variance (SD v1 configuration)
_EPS = 1e-6


def _res(c_in: int, c_out: int) -> ResBlock:
    return ResBlock(c_in, c_out, eps=_EPS)


class VAEAttention(nn.Module):
    """softmax(q k^T / sqrt(C)) v over the pixels, one head, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels, _EPS)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2)[:, None] for conv in (self.q, self.k,
                                                                             self.v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, HW, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class PadDownsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 convolution (SD's encoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Level(nn.Module):
    """One resolution's residual blocks and its resampler (named downsample or upsample)."""

    def __init__(self, res: list[ResBlock], resample: nn.Module | None, name: str):
        super().__init__()
        self.res = nn.ModuleList(res)
        setattr(self, name, resample)
        self._name = name

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.res:
            h = block(h)
        resample = getattr(self, self._name)
        return h if resample is None else resample(h)


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.mid_res1, self.mid_attn, self.mid_res2 = _res(ch, ch), VAEAttention(ch), _res(ch,
                                                                                          ch)

    def middle(self, h: torch.Tensor) -> torch.Tensor:
        return self.mid_res2(self.mid_attn(self.mid_res1(h)))


class Encoder(_Mid):
    def __init__(self, channels: int, base: int, mult: tuple, blocks: int, z: int):
        super().__init__(base * mult[-1])
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        ch, self.down = base, nn.ModuleList()
        for level, m in enumerate(mult):
            res = [_res(ch if i == 0 else base * m, base * m) for i in range(blocks)]
            ch = base * m
            last = level == len(mult) - 1
            self.down.append(_Level(res, None if last else PadDownsample(ch), "downsample"))
        self.norm_out, self.conv_out = group_norm(ch, _EPS), nn.Conv2d(ch, 2 * z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.middle(h))))


class Decoder(_Mid):
    def __init__(self, channels: int, base: int, mult: tuple, blocks: int, z: int):
        ch = base * mult[-1]
        super().__init__(ch)
        self.conv_in = nn.Conv2d(z, ch, 3, padding=1)
        levels = [None] * len(mult)  # indexed by resolution level, built from the deepest
        for level in reversed(range(len(mult))):
            out = base * mult[level]
            res = [_res(ch if i == 0 else out, out) for i in range(blocks + 1)]
            ch = out
            levels[level] = _Level(res, Upsample(ch) if level else None, "upsample")
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = group_norm(ch, _EPS), nn.Conv2d(ch, channels, 3,
                                                                       padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class SDVAE(nn.Module):
    """encode(x in [-1, 1]) -> (mean, logvar) of q(z | x); decode(z) -> x."""

    def __init__(self, channels: int = 3, base: int = 128, mult: tuple = (1, 2, 4, 4),
                 blocks: int = 2, z: int = 4):
        super().__init__()
        self.encoder = Encoder(channels, base, mult, blocks, z)
        self.decoder = Decoder(channels, base, mult, blocks, z)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))
