"""Names of Stable Diffusion v1's weights: the original single-file layout (`.safetensors` or
`.ckpt`), whose tensors are named by component prefix, and diffusers' folder layout.

    cond_stage_model.transformer.text_model.*   the CLIP text encoder (models/clip.py names)
    model.diffusion_model.*                      the UNet
    first_stage_model.*                          the VAE
    model_ema.*                                  EMA copies of the UNet (full checkpoints)

One written mapping (unet_key_names, vae_key_names) names every project tensor in both
layouts; the text encoder's names are the layouts' own. Reading files: train/stable_diffusion.py.
"""
import torch

TEXT_PREFIX = "cond_stage_model.transformer."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


# The one written mapping: each project key of the UNet and the VAE -> (original single-file
# key, diffusers key). Residual blocks are the project's ResBlock (models/layers.py).
_RES_ORIGINAL = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "skip": "skip_connection"}
_RES_DIFFUSERS = {"norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "skip": "conv_shortcut"}


def _res(rest: str, table: dict) -> str:
    head, _, tail = rest.partition(".")
    return f"{table[head]}.{tail}"


def unet_key_names(key: str, blocks: int, levels: int, attention_levels) -> tuple[str, str]:
    """(original, diffusers) names of a models.sd_unet.SDUNet state-dict key."""
    parts = key.split(".")
    rest = ".".join(parts[1:])
    simple = {"time_mlp.0": ("time_embed.0", "time_embedding.linear_1"),
              "time_mlp.2": ("time_embed.2", "time_embedding.linear_2"),
              "conv_in": ("input_blocks.0.0", "conv_in"), "norm_out": ("out.0", "conv_norm_out"),
              "conv_out": ("out.2", "conv_out")}
    stem = key.rsplit(".", 1)[0]
    if stem in simple:
        leaf = key.rsplit(".", 1)[1]
        return tuple(f"{name}.{leaf}" for name in simple[stem])
    if parts[0].startswith("mid_"):
        kind = parts[0][4:]
        index = {"res1": 0, "attn": 1, "res2": 2}[kind]
        diffusers = {"res1": "resnets.0", "attn": "attentions.0", "res2": "resnets.1"}[kind]
        if kind == "attn":
            return f"middle_block.1.{rest}", f"mid_block.attentions.0.{rest}"
        return (f"middle_block.{index}.{_res(rest, _RES_ORIGINAL)}",
                f"mid_block.{diffusers}.{_res(rest, _RES_DIFFUSERS)}")
    side, level, kind = parts[0], int(parts[1]), parts[2]
    tail = ".".join(parts[4:]) if kind in ("res", "attn") else ".".join(parts[3:])
    if side == "down":
        group = "input_blocks"
        first = 1 + level * (blocks + 1)
        diffusers = f"down_blocks.{level}"
    else:
        group = "output_blocks"
        first = level * (blocks + 1)
        diffusers = f"up_blocks.{level}"
        has_attn = (levels - 1 - level) in attention_levels
    if kind == "res":
        i = int(parts[3])
        return (f"{group}.{first + i}.0.{_res(tail, _RES_ORIGINAL)}",
                f"{diffusers}.resnets.{i}.{_res(tail, _RES_DIFFUSERS)}")
    if kind == "attn":
        i = int(parts[3])
        return f"{group}.{first + i}.1.{tail}", f"{diffusers}.attentions.{i}.{tail}"
    if kind == "downsample":  # conv.<weight|bias>
        return (f"input_blocks.{first + blocks}.0.op.{tail.split('.', 1)[1]}",
                f"{diffusers}.downsamplers.0.{tail}")
    return (f"output_blocks.{first + blocks}.{2 if has_attn else 1}.{tail}",
            f"{diffusers}.upsamplers.0.{tail}")


def unet_key_table(model) -> dict[str, tuple[str, str]]:
    """Every project key of an SDUNet -> (original, diffusers) names."""
    attention = [i for i, level in enumerate(model.down) if len(level.attn)]
    return {k: unet_key_names(k, model.blocks, model.levels, attention)
            for k in model.state_dict()}


_VAE_RES = {"norm1": ("norm1", "norm1"), "conv1": ("conv1", "conv1"), "norm2": ("norm2", "norm2"),
            "conv2": ("conv2", "conv2"), "skip": ("nin_shortcut", "conv_shortcut")}
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_MID = {"mid_res1": ("mid.block_1", "mid_block.resnets.0"),
            "mid_res2": ("mid.block_2", "mid_block.resnets.1"),
            "mid_attn": ("mid.attn_1", "mid_block.attentions.0")}


def vae_key_names(key: str, levels: int) -> tuple[str, str]:
    """(original, diffusers) names of a models.sd_vae.SDVAE state-dict key. Diffusers numbers
    the decoder's levels from the deepest and stores the attention's 1x1 convolutions as
    linear layers (see to_project_tensor)."""
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
        return key, key
    side = parts[0]
    if parts[1] == "norm_out":
        return key, f"{side}.conv_norm_out.{parts[2]}"
    if parts[1] in _VAE_MID:
        original, diffusers = _VAE_MID[parts[1]]
        inner, leaf = parts[2], parts[3]
        if parts[1] == "mid_attn":
            return (f"{side}.{original}.{inner}.{leaf}",
                    f"{side}.{diffusers}.{_VAE_ATTN[inner]}.{leaf}")
        return (f"{side}.{original}.{_VAE_RES[inner][0]}.{leaf}",
                f"{side}.{diffusers}.{_VAE_RES[inner][1]}.{leaf}")
    level, kind = int(parts[2]), parts[3]  # <side>.down|up.<level>.res|downsample|upsample...
    group = "down" if side == "encoder" else "up"
    index = level if side == "encoder" else levels - 1 - level
    if kind == "res":
        i, inner, leaf = parts[4], parts[5], parts[6]
        return (f"{side}.{group}.{level}.block.{i}.{_VAE_RES[inner][0]}.{leaf}",
                f"{side}.{group}_blocks.{index}.resnets.{i}.{_VAE_RES[inner][1]}.{leaf}")
    rest = ".".join(parts[4:])
    return (f"{side}.{group}.{level}.{kind}.{rest}",
            f"{side}.{group}_blocks.{index}.{kind}rs.0.{rest}")


def vae_key_table(model) -> dict[str, tuple[str, str]]:
    """Every project key of an SDVAE -> (original, diffusers) names."""
    return {k: vae_key_names(k, len(model.decoder.up)) for k in model.state_dict()}


def to_project_tensor(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor from another layout shaped as the project's: a linear weight (out, in) stored
    where the project has a 1x1 convolution (out, in, 1, 1) is reshaped; nothing else is."""
    if value.dim() == 2 and like.dim() == 4 and like.shape[2:] == (1, 1):
        return value.reshape(like.shape)
    return value


def to_layout(model: torch.nn.Module, table: dict[str, tuple[str, str]], column: int,
              prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's tensors named in the original (column 0) or diffusers (column 1) layout.
    Diffusers' VAE attention stores linear weights where the project has 1x1 convolutions."""
    out = {}
    for key, value in model.state_dict().items():
        name = table[key][column]
        if column == 1 and ".attentions.0.to_" in name and value.dim() == 4 \
                and name.startswith(("encoder.", "decoder.")):
            value = value[:, :, 0, 0]
        out[prefix + name] = value
    return out
