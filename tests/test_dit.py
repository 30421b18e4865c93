"""The Diffusion Transformer: shapes, patch order, adaLN-Zero starting as the identity, position
embeddings, class conditioning with a null class, and a training run through DiffusionMain."""
import math

import pytest
import torch

from models.dit import DiT, DiTBlock, sincos_position_embedding


@pytest.mark.parametrize("channels, size, patch", [(3, 16, 2), (4, 8, 2), (1, 8, 4), (3, 8, 1)])
def test_shapes_and_a_zero_output_at_initialisation(channels, size, patch):
    net = DiT(channels, size, patch, width=32, depth=2, heads=4, num_classes=5)
    x = torch.randn(3, channels, size, size)
    out = net(x, torch.tensor([0, 10, 999]), torch.tensor([0, 4, 5]))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError):
        DiT(channels, size + 1, 2)


def test_adaln_zero_blocks_start_as_the_identity():
    torch.manual_seed(0)
    block = DiTBlock(32, 4)
    x, cond = torch.randn(2, 9, 32), torch.randn(2, 32)
    assert torch.equal(block(x, cond), x)  # every gate is 0
    torch.nn.init.normal_(block.ada[1].weight, std=0.1)
    assert not torch.allclose(block(x, cond), x)


def test_patches_come_back_where_they_were_taken():
    """With no blocks, no normalisation and no position embedding, a patch embedding that
    copies each patch into a token and an output layer that copies it back give the input."""
    c, size, p = 2, 8, 2
    width = p * p * c
    net = DiT(c, size, p, width=width, depth=0, heads=1)
    net.norm_out, net.pos = torch.nn.Identity(), torch.zeros_like(net.pos)
    with torch.no_grad():
        net.embed.weight.zero_()
        net.embed.bias.zero_()
        for i in range(p):
            for j in range(p):
                for ch in range(c):
                    net.embed.weight[(i * p + j) * c + ch, ch, i, j] = 1.0
        net.out.weight.copy_(torch.eye(width))
    x = torch.randn(2, c, size, size)
    assert torch.allclose(net(x, torch.tensor([3, 4])), x, atol=1e-6)


def test_sincos_position_embedding_is_the_2d_closed_form():
    dim, grid = 16, 3
    emb = sincos_position_embedding(dim, grid)  # (9, 16): row half, then column half
    half, quarter = dim // 2, dim // 4
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        for k in range(quarter):
            freq = math.exp(-math.log(10000.0) * k / quarter)
            assert emb[index, k].item() == pytest.approx(math.cos(row * freq), abs=1e-6)
            assert emb[index, quarter + k].item() == pytest.approx(math.sin(row * freq), abs=1e-6)
            assert emb[index, half + k].item() == pytest.approx(math.cos(col * freq), abs=1e-6)
    assert len({tuple(r.tolist()) for r in emb}) == grid * grid  # every position distinct
    learned = DiT(3, 8, 2, width=16, depth=1, heads=2, pos_embed="learned")
    assert isinstance(learned.pos, torch.nn.Parameter)
    assert torch.allclose(learned.pos.data[0], sincos_position_embedding(16, 4))


def test_class_conditioning_and_the_null_class():
    torch.manual_seed(0)
    net = DiT(3, 8, 2, width=32, depth=1, heads=4, num_classes=3)
    for param in net.parameters():  # zero-initialised layers made random
        torch.nn.init.normal_(param, std=0.05)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    assert torch.equal(net(x, t), net(x, t, torch.full((2,), net.null_class)))


def test_diffusion_main_trains_and_evaluates_a_dit(tmp_path):
    import Diffusion_run_scripts.DiffusionEval as eval_script
    import Diffusion_run_scripts.DiffusionMain as main_script
    from utils.errors import UserError
    from utils.runs import load_checkpoint
    args = ["--IMAGE_SIZE=8", "--N_TRAIN=64", "--BATCH_SIZE=32", "--SAMPLE_STEPS=2",
            "--PROGRESSION_ROWS=2", "--WARMUP_STEPS=2", "--PRECISION=fp32", "--TIMESTEPS=20",
            "--BACKBONE=dit", "--DIT_WIDTH=32", "--DIT_DEPTH=2", "--DIT_HEADS=4",
            "--SAVE_ROOT", str(tmp_path)]
    run = main_script.main([*args, "--EPOCHS=2"])
    state = load_checkpoint(run.checkpoint)
    assert set(state["model_args"]) == {"dit"} and state["model_args"]["dit"]["width"] == 32
    eval_script.main(["--SAVE_ROOT", str(tmp_path), "--STEPS=2", "--GRID_SIZE=2",
                      "--STRIP_IMAGES=1", "--STRIP_COLUMNS=2", "--NOISED_T=(5,)",
                      "--COMPARE=('ddim-2',)", "--COMPARE_IMAGES=1", "--N_SAMPLES=0"])
    assert (run.plots / "eval" / "samples_grid.png").is_file()
    with pytest.raises(UserError, match="dit: width 32 does not split into 5 heads"):
        main_script.main([*args, "--DIT_HEADS=5"])


@pytest.mark.parametrize("class_std", [0.02, 1.0])
def test_embeddings_start_with_their_stated_spread(class_std):
    """The time MLP starts N(0, 0.02^2) as DiT's (Peebles & Xie 2023); the class embedding
    N(0, class_std^2): DiT's 0.02 when asked, 1.0 by default (measured: docs/studies)."""
    torch.manual_seed(0)
    net = DiT(3, 8, 2, width=64, depth=1, heads=4, num_classes=100, class_std=class_std)
    assert net.time_mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert net.class_emb.weight.std().item() == pytest.approx(class_std, rel=0.1)
    assert abs(net.class_emb.weight.mean().item()) < 0.1 * class_std
    default = DiT(3, 8, 2, width=64, depth=1, heads=4, num_classes=100)
    assert default.class_emb.weight.std().item() == pytest.approx(1.0, rel=0.1)
