"""Text-to-image from scratch end to end at a tiny size: the three stages train and save, a
trained run samples through the Stable Diffusion pipeline and script (the same images as
sampling its denoiser directly), the frozen encoder stays as pre-trained, caption dropout drops
whole captions, text guidance is the guided combination of x0, and bad prompts are one line."""
from pathlib import Path

import torch

import pytest

from LDM_run_scripts import LDMAutoencoderMain, StableDiffusion, TextEncoderMain, TextToImageMain
from models.samplers import sample
from tests.test_bad_input import _one_line_exit_2
from train.diffusion_step import drop_labels
from train.inference import load_run
from train.stable_diffusion import StableDiffusion as Pipeline
from train.text_to_image import load_components
from utils.runs import load_checkpoint

COMMON = ["--PRECISION=fp32", "--SEED=0", "--TENSORBOARD=False"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("t2i"))
    where = ["--SAVE_ROOT", root, "--PRECISION=fp32", "--SEED=0"]
    encoder = TextEncoderMain.main([*where, "--N_TRAIN=512", "--EPOCHS=1", "--BATCH_SIZE=64",
                                    "--WIDTH=16", "--HEADS=2", "--IMAGE_WIDTH=8"])
    autoencoder = LDMAutoencoderMain.main([*where, "--DATASET=scenes", "--N_TRAIN=64", "--BASE=8",
                                           "--EPOCHS=1", "--BATCH_SIZE=16",
                                           "--TENSORBOARD=False"])
    t2i = [*where, "--BASE=8", "--HEADS=2", "--BATCH_SIZE=16", "--SAMPLE_STEPS=3",
           "--WARMUP_STEPS=2", "--TENSORBOARD=False"]
    frozen = TextToImageMain.main([*t2i, "--EPOCHS=2", "--TEXT_ENCODER=frozen"])
    joint = TextToImageMain.main([*t2i, "--EPOCHS=1", "--TEXT_ENCODER=joint"])
    return root, encoder, autoencoder, frozen, joint


def test_the_stages_train_and_the_frozen_encoder_keeps_its_pretrained_weights(stages):
    root, encoder, _, frozen, joint = stages
    pretrained = load_checkpoint(encoder.checkpoint, "text_encoder")
    assert 0 <= pretrained["metrics"]["retrieval_held_out"] <= 1
    for run, same in ((frozen, True), (joint, False)):
        state = load_checkpoint(run.checkpoint, "t2i")
        assert state["text_encoder_run"] == encoder.name and state["epoch"] >= 1
        text = {k.removeprefix("text."): v for k, v in state["model"].items()
                if k.startswith("text.")}
        assert text.keys() == pretrained["text"].keys()
        equal = all(torch.equal(text[k], v) for k, v in pretrained["text"].items())
        assert equal == same
        ema = {k.removeprefix("module.text."): v for k, v in state["ema"].items()
               if k.startswith("module.text.")}  # the same up to the average's rounding
        assert all(torch.allclose(ema[k], v, atol=1e-5) for k, v in text.items()) or not same
    assert (root and (frozen.plots / "progression.png").is_file())


def test_a_trained_run_samples_through_the_sd_pipeline_as_its_own_denoiser(stages):
    """guidance 1: the pipeline's image is the run's EMA denoiser sampled from the pipeline's
    noise on the run's own grid, decoded by its autoencoder."""
    root, *_ = stages
    parts = load_components(root, "latest", torch.device("cpu"))
    pipe = Pipeline(parts, torch.device("cpu"), torch.float32)
    prompts = ["a small red star in the top left corner", "a blue circle above a red square"]
    out = pipe.generate(prompts, steps=4, guidance=1.0, sampler="ddim", height=32, width=32,
                        seed=5)
    loaded = load_run(root, "t2i", "latest", torch.device("cpu"))
    net = loaded.nets["net"]
    from train.inference import checkpoint_denoiser
    denoiser = checkpoint_denoiser(loaded.state, net, clip_x0=False)
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    ids = parts.tokenizer(prompts)
    z = sample(denoiser, noise, "ddim", 4, labels=ids).x
    assert torch.allclose(out.latents, z, atol=1e-5)
    ae = load_run(root, "ldm_autoencoder", "latest", torch.device("cpu")).nets["autoencoder"]
    images = ae.decode(z / loaded.state["scale_factor"]).clamp(-1, 1)
    assert torch.allclose(out.images, images, atol=1e-5)


def test_text_guidance_combines_the_conditional_and_empty_caption_predictions(stages):
    root, *_ = stages
    parts = load_components(root, "latest", torch.device("cpu"))
    pipe = Pipeline(parts, torch.device("cpu"), torch.float32)
    cond = pipe.encode_prompts(["a green star at the bottom"], {})
    uncond = pipe.encode_prompts([""], {})
    x, t, w = torch.randn(1, 4, 8, 8), torch.tensor([600]), 3.0
    x0_c = pipe.denoiser(cond, uncond, 1.0)(x, t)[0]
    x0_u = pipe.denoiser(uncond, uncond, 1.0)(x, t)[0]
    x0_w = pipe.denoiser(cond, uncond, w)(x, t)[0]
    assert torch.allclose(x0_w, x0_u + w * (x0_c - x0_u), atol=1e-5)


def test_the_script_samples_a_run_and_refuses_bad_prompts(stages, monkeypatch, capsys):
    root, *_ = stages
    where = ["--SAVE_ROOT", root, "--WEIGHTS=latest", "--PRECISION=fp32"]
    run, result = StableDiffusion.main([*where, "--N_IMAGES=2", "--PROMPT=a large blue circle in "
                                        "the centre"])
    assert result.images.shape == (2, 3, 32, 32)  # the run's own size unless typed
    assert (run.plots / "grid.png").is_file()
    for prompt, says in (("", "the prompt is empty"), ("a red fox", "never saw the word 'fox'"),
                         ("a red star!", "characters the tokenizer does not know"),
                         (" ".join(["red"] * 60), "this model reads at most")):
        line = _one_line_exit_2("LDM_run_scripts.StableDiffusion", [*where, f"--PROMPT={prompt}"],
                                monkeypatch, capsys)
        assert says in line
    line = _one_line_exit_2("LDM_run_scripts.StableDiffusion",
                            ["--SAVE_ROOT", root, "--WEIGHTS=nothing", "--PROMPT=a red star"],
                            monkeypatch, capsys)
    assert "not a v1.5 file or folder" in line


def test_caption_dropout_replaces_whole_captions_by_the_empty_one():
    ids = torch.arange(1, 4001).view(1000, 4)
    null = torch.tensor([1, 2, 0, 0])
    dropped = drop_labels(ids, 0.3, null, torch.Generator().manual_seed(0))
    is_null = (dropped == null).all(1)
    assert torch.equal(dropped[~is_null], ids[~is_null])  # the others are untouched
    assert 0.25 < is_null.float().mean() < 0.35
    classes = torch.arange(10, 1010)
    assert torch.equal(drop_labels(classes, 0.3, 7, torch.Generator().manual_seed(0)) == 7,
                       is_null)  # class labels: the same draws as before


def test_the_benchmark_scores_given_runs_and_draws_its_figures(stages, monkeypatch):
    """A smoke run of benchmarks.text_to_image on the fixture's runs (the FID evaluator, which
    trains on 20,000 scenes, is replaced: it is tested with the other families)."""
    from benchmarks import text_to_image as bench
    root, encoder, autoencoder, frozen, _ = stages
    monkeypatch.setattr(bench, "evaluate_samples",
                        lambda images, *a, **k: {"fid": 1.0, "real_vs_real": {"fid": 0.5}})
    data = bench.main([f"--SAVE_ROOT={root}", f"--TEXT_ENCODER_RUN={encoder.name}",
                       f"--AUTOENCODER_RUN={autoencoder.name}", f"--T2I_RUNS=('{frozen.name}',)",
                       "--N_PROMPTS=24", "--N_SWEEP=8", "--GUIDANCE_SWEEP=(1.0, 3.0)",
                       "--FIGURE_SEEDS=2", "--READER_SCENES=256", "--STEPS=2", "--RESULTS=None",
                       "--DEVICE=cpu"])
    row = data["rows"][0]
    assert row["run"] == frozen.name and row["grid_seconds"] > 0
    groups = {g for split in row["faithfulness"].values() for g in split}
    assert groups <= {"one_object", "two_objects"} and groups
    assert [s["guidance"] for s in data["sweep"]] == [1.0, 3.0]
    out = sorted((Path(root) / "saved_plots" / "compare").iterdir())[-1]
    assert (out / "prompt_grid.png").is_file() and (out / "guidance_sweep.png").is_file()
    assert "two objects, binding" in (out / "results.md").read_text()
