"""CLIP's text transformer (Radford et al. 2021), the text encoder of Stable Diffusion v1.

Token and learned position embeddings, pre-norm transformer layers with causal self-attention
(each token sees itself and the tokens before it) and a quick-GELU MLP, a final LayerNorm. SD v1
conditions on the final LayerNorm's output for all 77 tokens. ViT-L/14's text tower: width 768,
12 layers, 12 heads, MLP 3072, vocabulary 49408, 77 positions.

The module names follow the layout of the published weights (`text_model.embeddings....`,
`encoder.layers.<i>.self_attn.q_proj`, ...), so a checkpoint's tensors load by name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, width: int, positions: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.position_embedding = nn.Embedding(positions, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token_embedding(ids) + self.position_embedding(positions)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(width), _Attention(width, heads)
        self.layer_norm2, self.mlp = nn.LayerNorm(width), _MLP(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(width, heads, hidden) for _ in range(layers))


class _TextModel(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, hidden: int,
                 positions: int):
        super().__init__()
        self.embeddings = _Embeddings(vocab, width, positions)
        self.encoder = _Encoder(width, layers, heads, hidden)
        self.final_layer_norm = nn.LayerNorm(width)


class CLIPTextEncoder(nn.Module):
    """ids (B, L) -> the final LayerNorm's output (B, L, width)."""

    def __init__(self, vocab: int = 49408, width: int = 768, layers: int = 12, heads: int = 12,
                 hidden: int = 3072, positions: int = 77):
        super().__init__()
        self.text_model = _TextModel(vocab, width, layers, heads, hidden, positions)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        model = self.text_model
        x = model.embeddings(ids)
        for layer in model.encoder.layers:
            x = layer(x)
        return model.final_layer_norm(x)
