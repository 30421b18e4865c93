"""Stable Diffusion end to end against diffusers' pipelines (test-only oracles) built from the
same tiny random components and scheduler configuration: the same final latents for the same
prompt, seed and guidance; our loader reads the diffusers folder the pipeline saved."""
import json
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from train.sd_loading import load_components  # noqa: E402
from train.stable_diffusion import StableDiffusion  # noqa: E402
from utils.clip_tokenizer import CLIPTokenizer  # noqa: E402

TINY = {"text": dict(width=32, layers=2, heads=4, hidden=64),
        "unet": dict(base=32, channel_mult=(1, 2), blocks=1, attention_levels=(0,), heads=4,
                     context_dim=32),
        "vae": dict(base=32, mult=(1, 2), blocks=1)}
BPE = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def _vocabulary(folder: Path) -> Path:
    tokenizer = CLIPTokenizer.load(BPE)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges),
                                       encoding="utf-8")
    return folder


V15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
           set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")  # v1.5's config


def _scheduler(sampler: str = "ddim", spacing: str = "leading"):
    """SD v1.5's shipped scheduler configuration for the sampler diffusers runs it with."""
    if sampler == "dpmpp2m":
        config = {k: v for k, v in V15.items() if k not in ("clip_sample", "set_alpha_to_one")}
        return diffusers.DPMSolverMultistepScheduler(
            **config, timestep_spacing="leading" if spacing == "karras" else spacing,
            use_karras_sigmas=spacing == "karras", algorithm_type="dpmsolver++", solver_order=2)
    if sampler == "ddpm":
        config = {k: v for k, v in V15.items() if k != "set_alpha_to_one"}
        return diffusers.DDPMScheduler(**config, timestep_spacing=spacing)
    return diffusers.DDIMScheduler(**V15, timestep_spacing=spacing)


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    """A tiny random diffusers StableDiffusionPipeline saved with save_pretrained."""
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu"))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, sample_size=16)
    for model in (text, unet, vae):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # away from zero-initialised outputs
    vocab = _vocabulary(root / "vocab")
    tokenizer = transformers.CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                                           pad_token="<|endoftext|>", model_max_length=77)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "model", safe_serialization=True)
    return root / "model"


def _ours(folder: Path) -> StableDiffusion:
    return StableDiffusion(load_components(folder, model_args=TINY), torch.device("cpu"),
                           torch.float32)


@pytest.mark.parametrize("sampler, spacing", [(s, p) for s in ("ddim", "ddpm", "dpmpp2m")
                                               for p in ("leading", "trailing", "linspace")]
                         + [("dpmpp2m", "karras")])
def test_timestep_grids_equal_diffusers_schedulers(sampler, spacing):
    from models.diffusion import NoiseSchedule
    from models.grids import sd_timesteps
    alphas_cumprod = NoiseSchedule("scaled_linear", 1000).alphas_cumprod
    for steps in (1, 4, 7, 10, 25, 30, 50):
        if spacing == "karras" and steps < 2:
            continue
        reference = _scheduler(sampler, spacing)
        reference.set_timesteps(steps)
        expected = [int(t) for t in reference.timesteps]
        assert sd_timesteps(alphas_cumprod, steps, spacing, sampler) == expected, steps


def _pipelines(saved_pipeline, sampler):
    ours = _ours(saved_pipeline)
    pipes = []
    for kind in (diffusers.StableDiffusionPipeline, diffusers.StableDiffusionImg2ImgPipeline):
        pipe = kind.from_pretrained(saved_pipeline)
        pipe.scheduler = _scheduler(sampler)
        pipe.set_progress_bar_config(disable=True)
        pipes.append(pipe)
    return ours, *pipes


@pytest.mark.parametrize("sampler, steps", [("ddim", 4), ("ddim", 10), ("dpmpp2m", 4),
                                            ("dpmpp2m", 10)])
def test_leading_spacing_gives_diffusers_v15_images(saved_pipeline, sampler, steps):
    """The same prompt, seed, guidance, sampler and steps as diffusers' v1.5 pipeline (its
    shipped scheduler config: leading, steps_offset 1, set_alpha_to_one False): the same
    latents and images, text-to-image and image-to-image."""
    ours, txt2img, img2img = _pipelines(saved_pipeline, sampler)
    start = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    expected = txt2img("a red fox in the snow", negative_prompt="blurry",
                       num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=2,
                       latents=start.clone(), output_type="latent", height=16, width=16).images
    got = ours.generate("a red fox in the snow", "blurry", steps=steps, guidance=7.5,
                        height=16, width=16, n_images=2, seed=3, sampler=sampler,
                        spacing="leading")
    assert (got.latents - expected).abs().max() <= 1e-4
    assert got.images.shape == (2, 3, 16, 16)  # the tiny VAE downsamples by 2
    decoded = txt2img.vae.decode(expected / 0.18215).sample.clamp(-1, 1)
    assert (got.images - decoded).abs().max() <= 2e-3
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # [0, 1]
    expected = img2img("a castle", image=image, strength=0.5, num_inference_steps=steps,
                       guidance_scale=5.0, generator=torch.Generator().manual_seed(7),
                       output_type="latent").images
    got = ours.generate("a castle", steps=steps, guidance=5.0, height=16, width=16, seed=7,
                        init_image=image * 2 - 1, strength=0.5, sampler=sampler,
                        spacing="leading")
    assert (got.latents - expected).abs().max() <= 1e-4


def test_a_strength_with_no_step_is_refused(saved_pipeline):
    from utils.errors import UserError
    ours = _ours(saved_pipeline)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for strength in (0.0, 0.05):  # int(10 x strength) = 0: as diffusers, no run without a step
        with pytest.raises(UserError, match="leaves no denoising step|must be in"):
            ours.generate("a castle", steps=10, height=16, width=16, seed=7,
                          init_image=image * 2 - 1, strength=strength)


def _single_file(ours: StableDiffusion, path: Path, ema_shift: float | None = None) -> Path:
    """The project's components written as one original-layout checkpoint (optionally with
    EMA copies of the UNet, shifted so that they differ)."""
    from models.sd_weights import (TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, to_layout,
                                   unet_key_table, vae_key_table)
    parts = ours.parts
    state = {TEXT_PREFIX + k: v for k, v in parts.text.state_dict().items()}
    state.update(to_layout(parts.unet, unet_key_table(parts.unet), 0, UNET_PREFIX))
    state.update(to_layout(parts.vae, vae_key_table(parts.vae), 0, VAE_PREFIX))
    state[TEXT_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if ema_shift is not None:
        for key, value in list(state.items()):
            if key.startswith(UNET_PREFIX):
                name = "model_ema.diffusion_model" + key[len(UNET_PREFIX):].replace(".", "")
                state[name] = value + ema_shift
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def test_single_file_checkpoints_load_with_their_ema_and_fail_clearly(saved_pipeline, tmp_path):
    from utils.errors import UserError
    ours = _ours(saved_pipeline)
    vocab = saved_pipeline / "tokenizer"
    single = _single_file(ours, tmp_path / "model.safetensors")
    loaded = load_components(single, vocab, model_args=TINY)
    for name in ("text", "unet", "vae"):
        a, b = getattr(ours.parts, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    full = load_components(_single_file(ours, tmp_path / "full.ckpt", ema_shift=0.5), vocab,
                           model_args=TINY)
    key = "conv_in.weight"
    assert torch.allclose(full.unet.state_dict()[key], ours.parts.unet.state_dict()[key] + 0.5)
    assert full.notes == ["UNet: EMA weights"]
    with pytest.raises(UserError, match="TOKENIZER"):
        load_components(single, None, model_args=TINY)
    (tmp_path / "cut.safetensors").write_bytes(single.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not be read"):
        load_components(tmp_path / "cut.safetensors", vocab, model_args=TINY)
    with pytest.raises(UserError, match=r"WEIGHTS: .*does not exist"):
        load_components(tmp_path / "none.ckpt", vocab, model_args=TINY)
    with pytest.raises(UserError, match=r"UNet tensor time_mlp.0.weight has shape \(128, 32\)"):
        load_components(single, vocab, model_args={**TINY, "unet": {**TINY["unet"], "base": 64}})


def test_offload_on_a_cpu_keeps_each_network_in_the_file_until_it_runs(saved_pipeline,
                                                                       tmp_path):
    ours = _ours(saved_pipeline)
    single = _single_file(ours, tmp_path / "model.safetensors")
    vocab = saved_pipeline / "tokenizer"
    lazy = load_components(single, vocab, model_args=TINY, lazy=True)
    networks = ("text", "unet", "vae")
    assert all(p.is_meta for n in networks for p in getattr(lazy, n).parameters())
    offloaded = StableDiffusion(lazy, torch.device("cpu"), torch.float32, "model")
    kwargs = dict(steps=4, guidance=5.0, height=16, width=16, n_images=2, seed=1, snapshots=2)
    got = offloaded.generate("a red fox", "blurry", **kwargs)
    expected = ours.generate("a red fox", "blurry", **kwargs)
    assert torch.equal(got.latents, expected.latents)
    assert torch.equal(got.images, expected.images)
    assert got.seconds["weights_read"] > 0
    assert all(p.is_meta for n in networks for p in getattr(lazy, n).parameters())  # released
    # read in the pipeline's dtype: no fp32 copy of a bf16 run
    half = load_components(single, vocab, model_args=TINY, dtype=torch.bfloat16)
    assert {p.dtype for n in networks for p in getattr(half, n).parameters()} == {torch.bfloat16}
    same = StableDiffusion(load_components(single, vocab, model_args=TINY, lazy=True),
                           torch.device("cpu"), torch.float32, "none")  # read at once
    assert torch.equal(same.generate("a red fox", "blurry", **kwargs).latents, expected.latents)


def test_a_diffusers_folder_gives_its_own_sizes(saved_pipeline):
    from train.sd_loading import folder_model_args
    args = folder_model_args(saved_pipeline)
    for name in TINY:
        assert {k: args[name][k] for k in TINY[name]} == TINY[name], name
    assert args["text"]["vocab"] == 49408


def test_run_script_writes_images_strip_config_and_metrics(saved_pipeline, tmp_path):
    from PIL import Image

    from LDM_run_scripts import StableDiffusion as script
    from utils.errors import UserError
    args = [f"--WEIGHTS={saved_pipeline}", "--HEIGHT=16", "--WIDTH=16", "--STEPS=4",
            "--N_IMAGES=2", "--STRIP_STEPS=3", "--PRECISION=fp32", f"--SAVE_ROOT={tmp_path}",
            "--PROMPT=a red fox"]
    run, result = script.main(args)
    for name in ("image_0.png", "image_1.png", "grid.png", "denoising_strip.png",
                 "config.json", "metrics.json", "index.html"):
        assert (run.plots / name).is_file(), name
    metrics = json.loads((run.plots / "metrics.json").read_text())
    assert {"text_encoder", "unet", "unet_per_step", "vae_decode"} <= set(metrics["seconds"])
    assert metrics["peak_rss_mb"] > 0 and metrics["dtype"] == "float32"
    assert json.loads((run.plots / "config.json").read_text())["PROMPT"] == "a red fox"
    again = script.main(args)[1]  # the same seed: the same images
    assert torch.equal(again.images, result.images)
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / "init.png")
    run, _ = script.main([*args, f"--INIT_IMAGE={tmp_path / 'init.png'}", "--STRENGTH=0.5"])
    assert (run.plots / "init_and_results.png").is_file() and run.name.endswith("img2img")
    for bad, message in [("--HEIGHT=15", "multiples of 2"), ("--STRENGTH=2", "STRENGTH"),
                         (f"--INIT_IMAGE={tmp_path / 'init.png'} --STRENGTH=0.1",
                          "leaves no denoising step"),
                         ("--SAMPLER=plms", "SAMPLER"), (f"--INIT_IMAGE={tmp_path}", "INIT_IMAGE"),
                         ("--OFFLOAD=disk", "OFFLOAD")]:
        with pytest.raises(UserError, match=message):
            script.main([*args, *bad.split(" ")])
    with pytest.raises(UserError, match="WEIGHTS is not set"):
        script.main([f"--SAVE_ROOT={tmp_path}"])


def test_a_missing_checkpoint_is_one_line_and_exit_status_2(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "LDM_run_scripts.StableDiffusion",
                           f"--WEIGHTS={tmp_path / 'none.safetensors'}",
                           f"--SAVE_ROOT={tmp_path}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "does not exist" in done.stderr
    assert not (tmp_path / "saved_plots").exists()  # nothing written
