"""Stable Diffusion v1's UNet: the project's residual blocks with text cross-attention
(Rombach et al. 2022, the v1 inference configuration: 4 latent channels, model channels 320,
multipliers (1, 2, 4, 4), 2 residual blocks per level, spatial transformers with 8 heads and a
768-wide text context at the first three levels and in the middle).

Where SD's math differs from the project's pixel UNet (models/unet.py):
- residual blocks add the projected time embedding to the features before the second norm
  (ResBlock emb_mode "add") instead of the project's scale-and-shift after it;
- attention is a spatial transformer: GroupNorm, 1x1 projection in, per pixel token a pre-norm
  block of self-attention, cross-attention to the text tokens and a GEGLU feed-forward
  (Shazeer 2020), 1x1 projection out, residual around it all;
- the time embedding MLP is 320 -> 1280 -> 1280 on the same cos/sin timestep features
  (models.layers.sinusoidal_embedding).
Module names follow diffusers' structure closely; models/sd_weights.py maps them to the
original single-file names and to diffusers' names.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import Downsample, ResBlock, Upsample, group_norm, sinusoidal_embedding


class CrossAttention(nn.Module):
    """Multi-head attention of x's tokens over context's (x itself when context is None)."""

    def __init__(self, width: int, heads: int, context_dim: int | None = None):
        super().__init__()
        context_dim = context_dim or width
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(width, width))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape

        def split(t):
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)),
                                             split(self.to_v(context)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    """x W_a * gelu(x W_b) from one projection (Shazeer 2020)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, width: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(width, mult * width), nn.Identity(),
                                 nn.Linear(mult * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, feed-forward; each residual."""

    def __init__(self, width: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(width), CrossAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.attn2 = CrossAttention(width, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(width), FeedForward(width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Feature map -> tokens (one per pixel) -> transformer blocks -> feature map, residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1):
        super().__init__()
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, context_dim) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class _Level(nn.Module):
    """One resolution: residual blocks, their spatial transformers (maybe none), a resampler."""

    def __init__(self, res: list[ResBlock], attn: list[SpatialTransformer],
                 resample: nn.Module | None, name: str):
        super().__init__()
        self.res, self.attn = nn.ModuleList(res), nn.ModuleList(attn)
        setattr(self, name, resample)
        self._resample = name

    def block(self, i: int, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor):
        h = self.res[i](h, emb)
        return self.attn[i](h, context) if len(self.attn) else h

    def resample(self, h: torch.Tensor, *size) -> torch.Tensor:
        module = getattr(self, self._resample)
        return h if module is None else module(h, *size)


class SDUNet(nn.Module):
    """eps(x_t, t, text context): (B, 4, H/8, W/8) latents, (B,) timesteps, (B, 77, 768). Any
    latent size: an odd size halved on the way down is met again by upsampling to the skip
    connection's size."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, base: int = 320,
                 channel_mult: tuple = (1, 2, 4, 4), blocks: int = 2,
                 attention_levels: tuple = (0, 1, 2), heads: int = 8, context_dim: int = 768,
                 depth: int = 1):
        super().__init__()
        self.base, self.blocks, self.levels = base, blocks, len(channel_mult)
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, base, 3, padding=1)

        def res(c_in, c_out):
            return ResBlock(c_in, c_out, emb_dim, emb_mode="add")

        def attn(level, c):
            return [SpatialTransformer(c, heads, context_dim, depth)] if level in \
                attention_levels else []
        skips, ch, self.down = [base], base, nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            out = base * mult
            res_blocks, attns = [], []
            for _ in range(blocks):
                res_blocks.append(res(ch, out))
                attns += attn(level, out)
                ch = out
                skips.append(ch)
            last = level == self.levels - 1
            self.down.append(_Level(res_blocks, attns, None if last else Downsample(ch),
                                    "downsample"))
            skips += [] if last else [ch]
        self.mid_res1, self.mid_attn = res(ch, ch), SpatialTransformer(ch, heads, context_dim,
                                                                       depth)
        self.mid_res2 = res(ch, ch)
        self.up = nn.ModuleList()
        for level in reversed(range(self.levels)):
            out = base * channel_mult[level]
            res_blocks, attns = [], []
            for _ in range(blocks + 1):
                res_blocks.append(res(ch + skips.pop(), out))
                attns += attn(level, out)
                ch = out
            self.up.append(_Level(res_blocks, attns, Upsample(ch) if level else None,
                                  "upsample"))
        self.norm_out, self.conv_out = group_norm(ch), nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.base).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for i in range(self.blocks):
                h = level.block(i, h, emb, context)
                skips.append(h)
            if level.downsample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), context), emb)
        for level in self.up:
            for i in range(self.blocks + 1):
                h = level.block(i, torch.cat([h, skips.pop()], dim=1), emb, context)
            if level.upsample is not None:  # to the next skip's size: any multiple of 8 px
                h = level.resample(h, tuple(skips[-1].shape[-2:]))  # (as diffusers' UNet)
        return self.conv_out(F.silu(self.norm_out(h)))
