import math

import pytest
import torch

from models.layers import Attention, ResBlock, sinusoidal_embedding
from models.unet import UNet


@pytest.mark.parametrize("channels, size, mult, attn", [(3, 32, (1, 2, 2), (16,)),
                                                        (3, 64, (1, 2, 2, 2), (16,)),
                                                        (4, 8, (1, 2), (4,)),
                                                        (4, 16, (1, 2), (8,)), (1, 16, (1,), ())])
def test_unet_shapes_and_zero_initial_output(channels, size, mult, attn):
    net = UNet(channels, size, base=16, channel_mult=mult, blocks=1, attention_resolutions=attn,
               num_classes=3)
    x, t = torch.randn(2, channels, size, size), torch.tensor([0, 999])
    out = net(x, t, torch.tensor([0, 3]))  # 3 is the null class
    assert out.shape == x.shape and torch.count_nonzero(out) == 0
    assert sum(isinstance(m, Attention) for m in net.modules()) == (
        1 + 3 * len(attn) * (size // 2 ** (len(mult) - 1) <= max(attn, default=0)))


def test_unet_uses_time_and_class():
    torch.manual_seed(0)
    net = UNet(3, 16, base=16, channel_mult=(1, 2), blocks=1, attention_resolutions=(8,),
               num_classes=2)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    net.eval()  # no dropout
    x = torch.randn(1, 3, 16, 16)
    a = net(x, torch.tensor([5]), torch.tensor([0]))
    assert not torch.allclose(a, net(x, torch.tensor([500]), torch.tensor([0])))
    assert not torch.allclose(a, net(x, torch.tensor([5]), torch.tensor([1])))
    assert torch.allclose(net(x, torch.tensor([5])), net(x, torch.tensor([5]), torch.tensor([2])))


def test_attention_matches_softmax_formula():
    torch.manual_seed(0)
    layer = Attention(8, heads=2).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    qkv = layer.qkv(layer.norm(x)).reshape(2, 3, 2, 4, 9)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, heads, C/heads, HW)
    weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(4), dim=-1)  # (B, h, HW, HW)
    y = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 8, 3, 3)
    assert torch.allclose(layer(x), x + layer.out(y), atol=1e-12)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0, 3]), 6)
    assert torch.allclose(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    freqs = torch.exp(-math.log(10000) * torch.arange(3) / 3)
    assert torch.allclose(emb[1, :3], torch.cos(3 * freqs))


def test_resblock_scale_shift_conditioning():
    block = ResBlock(4, 8, emb_dim=5)
    torch.nn.init.zeros_(block.emb.weight), torch.nn.init.zeros_(block.emb.bias)
    x = torch.randn(2, 4, 6, 6)
    # zero scale and shift: conditioning is the identity, whatever the embedding
    assert torch.allclose(block(x, torch.randn(2, 5)), block(x, torch.randn(2, 5)))


def test_patch_unet_is_the_plain_unet_on_folded_pixels():
    """UNET_PATCH=2: the same network as a plain UNet on the 2x2-folded image (12 channels at
    half size, in PixelUnshuffle's channel order), its output unfolded back to pixels."""
    torch.manual_seed(0)
    kwargs = dict(base=16, channel_mult=(1, 2), blocks=1, attention_resolutions=(4,),
                  num_classes=2, dropout=0.0)
    net = UNet(3, 16, patch=2, **kwargs)
    inner = UNet(12, 8, **kwargs)
    inner.load_state_dict(net.state_dict())
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    inner.conv_out.weight.data.copy_(net.conv_out.weight.data)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    out = net(x, t, y)
    folded = torch.stack([x[:, :, a::2, b::2] for a in range(2) for b in range(2)], dim=2)
    inner_out = inner(folded.reshape(2, 12, 8, 8), t, y).reshape(2, 3, 2, 2, 8, 8)
    assert out.shape == x.shape
    for a in range(2):  # output pixel (2i + a, 2j + b) is inner channel c * 4 + a * 2 + b
        for b in range(2):
            assert torch.allclose(out[:, :, a::2, b::2], inner_out[:, :, a, b], atol=1e-6)
    assert sum(isinstance(m, Attention) for m in net.modules()) == 1 + 3  # 4 = 16 / 2 / 2


def test_patch_must_divide_the_size():
    with pytest.raises(ValueError, match="patch 3"):
        UNet(3, 16, base=8, channel_mult=(1,), patch=3)
