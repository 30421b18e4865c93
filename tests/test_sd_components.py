"""Stable Diffusion's UNet and VAE against diffusers' (a test-only oracle), at tiny sizes with
random weights, through both weight layouts; and full size on the meta device."""
import pytest
import torch

from models.sd_unet import SDUNet
from models.sd_weights import UNET_PREFIX, unet_key_table

diffusers = pytest.importorskip("diffusers")
single_file = pytest.importorskip("diffusers.loaders.single_file_utils")

TINY_UNET = dict(base=32, channel_mult=(1, 2), blocks=2, attention_levels=(0,), heads=4,
                 context_dim=16)


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _reference_unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=32).eval()


def test_unet_equals_diffusers_through_the_single_file_layout():
    ours = _randomise(SDUNet(**TINY_UNET))
    table = unet_key_table(ours)
    exported = {UNET_PREFIX + table[k][0]: v for k, v in ours.state_dict().items()}
    reference = _reference_unet()
    converted = single_file.convert_ldm_unet_checkpoint(exported, dict(reference.config))
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        assert (ours(x, t, context) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("size", [(6, 10), (5, 7), (12, 8)])
def test_unet_sizes_that_do_not_halve_evenly_equal_diffusers(size):
    """Latents of 64x96 px at full size (8x12, halved to 4x6, 2x3, then 1x2) failed; as
    diffusers, the way up meets each skip connection at its size."""
    ours = _randomise(SDUNet(**{**TINY_UNET, "channel_mult": (1, 2, 2),
                                "attention_levels": (0, 2)}))
    table = unet_key_table(ours)
    exported = {UNET_PREFIX + table[k][0]: v for k, v in ours.state_dict().items()}
    reference = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
        layers_per_block=2, cross_attention_dim=16, attention_head_dim=4, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D")).eval()
    converted = single_file.convert_ldm_unet_checkpoint(exported, dict(reference.config))
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    x, t, context = torch.randn(2, 4, *size), torch.tensor([10, 900]), torch.randn(2, 7, 16)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, context)
    assert got.shape == x.shape and (got - expected).abs().max() <= 1e-5


def test_full_size_components_have_sd_v15s_parameters_and_keys():
    """On the meta device: parameter counts of v1.5's UNet and VAE, and the project's keys,
    exported to the original layout, are exactly the keys diffusers' single-file converter
    turns into its full-size v1.5 models (none missing, none left over)."""
    from models.sd_vae import SDVAE
    from models.sd_weights import VAE_PREFIX, to_layout, vae_key_table
    with torch.device("meta"):
        unet, vae = SDUNet(), SDVAE()
        reference_unet = diffusers.UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        reference_vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
            layers_per_block=2, latent_channels=4, sample_size=512)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    table = unet_key_table(unet)
    exported = {UNET_PREFIX + table[k][0]: v for k, v in unet.state_dict().items()}
    converted = single_file.convert_ldm_unet_checkpoint(exported, dict(reference_unet.config))
    assert set(converted) == set(reference_unet.state_dict())
    exported = to_layout(vae, vae_key_table(vae), 0, VAE_PREFIX)
    converted = single_file.convert_ldm_vae_checkpoint(exported, dict(reference_vae.config))
    assert set(converted) == set(reference_vae.state_dict())


TINY_VAE = dict(base=32, mult=(1, 2), blocks=1)


def _reference_vae():
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=16).eval()


def test_vae_equals_diffusers_through_the_single_file_layout():
    from models.sd_vae import SDVAE
    from models.sd_weights import VAE_PREFIX, to_layout, vae_key_table
    ours = _randomise(SDVAE(**TINY_VAE))
    exported = to_layout(ours, vae_key_table(ours), 0, VAE_PREFIX)
    reference = _reference_vae()
    converted = single_file.convert_ldm_vae_checkpoint(exported, dict(reference.config))
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = reference.encode(x).latent_dist
        mean, logvar = ours.encode(x)
        assert (mean - posterior.mean).abs().max() <= 1e-5
        assert (logvar - posterior.logvar).abs().max() <= 1e-5
        assert (ours.decode(mean) - reference.decode(mean).sample).abs().max() <= 1e-5


def test_diffusers_saved_weights_load_into_the_project_models(tmp_path):
    """The reverse direction: diffusers models saved with save_pretrained, read back by name
    through the same key tables, give the same outputs; and the project's export to the
    diffusers layout is exactly what diffusers saved."""
    from safetensors.torch import load_file

    from models.sd_vae import SDVAE
    from models.sd_weights import to_layout, vae_key_table
    from train.sd_loading import from_layout
    for reference, ours, table_of in [(_reference_unet(), SDUNet(**TINY_UNET), unet_key_table),
                                      (_reference_vae(), SDVAE(**TINY_VAE), vae_key_table)]:
        _randomise(reference).save_pretrained(tmp_path / type(ours).__name__)
        saved = load_file(str(tmp_path / type(ours).__name__ /
                              "diffusion_pytorch_model.safetensors"))
        table = table_of(ours)
        from_layout(ours, saved, table, 1, type(ours).__name__)
        exported = to_layout(ours, table, 1)
        assert set(exported) == set(saved)
        assert all(torch.equal(exported[k], saved[k]) for k in saved)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 500]), torch.randn(2, 5, 16)
    unet = SDUNet(**TINY_UNET)
    from_layout(unet, load_file(str(tmp_path / "SDUNet" / "diffusion_pytorch_model.safetensors")),
                unet_key_table(unet), 1, "UNet")
    reference = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "SDUNet").eval()
    with torch.no_grad():
        assert (unet.eval()(x, t, context)
                - reference(x, t, encoder_hidden_states=context).sample).abs().max() <= 1e-5


def test_a_wrong_shape_or_missing_tensor_is_named():
    from train.sd_loading import from_layout
    from utils.errors import UserError
    ours = SDUNet(**TINY_UNET)
    table = unet_key_table(ours)
    tensors = {table[k][0]: v for k, v in ours.state_dict().items()}
    tensors["out.2.weight"] = torch.zeros(4, 32, 1, 1)
    with pytest.raises(UserError, match=r"conv_out.weight has shape \(4, 32, 1, 1\)"):
        from_layout(ours, tensors, table, 0, "UNet")
    del tensors["out.2.weight"]
    with pytest.raises(UserError, match="UNet is missing 1 tensor"):
        from_layout(ours, tensors, table, 0, "UNet")
