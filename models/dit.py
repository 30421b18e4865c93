"""Diffusion Transformer (Peebles & Xie 2023): patchify, transformer blocks conditioned by
adaLN-Zero on the timestep and class embeddings, a linear decoder back to patches.

The same interface as the UNet, net(x_t, t, labels) -> output of x's shape, with a null class
for classifier-free guidance, so the loop, the samplers and the checkpoint serve both.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import sinusoidal_embedding

POS_EMBEDS = ("sincos", "learned")


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding of a grid x grid of patches (Vaswani et al. 2017, per
    axis, as in MAE and DiT): half the channels encode the row, half the column. (N, dim)."""
    if dim % 4:
        raise ValueError(f"the DiT width must be a multiple of 4 for 2-D positions, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([sinusoidal_embedding(rows.flatten(), dim // 2),
                      sinusoidal_embedding(cols.flatten(), dim // 2)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, per sample (B, 1, C) over the tokens of x (B, N, C)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """x + gate * attention(modulate(norm(x))), then the same with an MLP; shift, scale and
    gate regressed from the conditioning and zero-initialised, so the block starts as the
    identity (adaLN-Zero, Peebles & Xie 2023, sec. 3.2)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} does not split into {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)  # each (B, heads, N, C / heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """eps/x0/v/flow predictor on images or latents (B, C, S, S) with S divisible by patch;
    class_std: the initial std of the class embedding (0.02 as DiT; 1.0 by measurement)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, patch: int = 2,
                 width: int = 192, depth: int = 6, heads: int = 6, num_classes: int = 0,
                 pos_embed: str = "sincos", mlp_ratio: float = 4.0, class_std: float = 1.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        self.in_channels, self.patch, self.width = in_channels, patch, width
        self.num_classes, self.null_class = num_classes, num_classes
        self.grid = image_size // patch
        self.embed = nn.Conv2d(in_channels, width, patch, stride=patch)  # patchify + linear
        position = sincos_position_embedding(width, self.grid)[None]  # (1, N, width)
        if pos_embed == "learned":
            self.pos = nn.Parameter(position.clone())
        else:
            self.register_buffer("pos", position, persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch * patch * in_channels)
        for layer in (self.ada_out[1], self.out):  # the untrained model predicts 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        if self.class_emb is not None and class_std != 1.0:  # nn.Embedding starts N(0, 1)
            # class_std 0.02 is DiT's label table (Peebles & Xie 2023); 1.0, the default, was
            # measured far better at a CPU budget (docs/studies/diffusion.md, "DiT"): from 0.02
            # the labels barely reach the zero-initialised adaLN in a few hundred steps, so
            # guidance has nothing to amplify
            nn.init.normal_(self.class_emb.weight, std=class_std)
        w = self.embed.weight.data  # patch embedding initialised like a linear layer (DiT)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, c, s, _ = x.shape
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, width)
        cond = self.time_mlp(sinusoidal_embedding(t, 256))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.null_class, device=x.device)
            cond = cond + self.class_emb(labels)
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.ada_out(cond).chunk(2, dim=1)
        patches = self.out(modulate(self.norm_out(tokens), shift, scale))  # (B, N, p*p*C)
        p, g = self.patch, self.grid
        patches = patches.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return patches.reshape(b, c, s, s)

