"""Named recipes (--RECIPE=): they set constants under the command line, every recipe is valid in
every script it names, the GPU recipe runs end to end at a tiny size on the CPU, and its cost
benchmark counts what a training step does."""
import json
from types import SimpleNamespace

import pytest
import torch

from LDM_run_scripts import LDMAutoencoderMain, LDMDiffusionMain, LDMEval
from utils.config import help_text, resolve_constants, script_name
from utils.errors import UserError
from utils.recipes import RECIPES


def test_a_recipe_sets_constants_and_the_command_line_wins():
    plain = resolve_constants(vars(LDMEval), [])
    recipe = resolve_constants(vars(LDMEval), ["--RECIPE=gpu64"])
    assert (plain.GUIDANCE, plain.RECIPE) == (2.0, None)
    assert (recipe.GUIDANCE, recipe.STEPS, recipe.RECIPE) == (5.0, 50, "gpu64")
    for order in (["--RECIPE=gpu64", "--GUIDANCE=3"], ["--GUIDANCE=3", "--RECIPE=gpu64"]):
        assert resolve_constants(vars(LDMEval), order).GUIDANCE == 3.0
    ae = resolve_constants(vars(LDMAutoencoderMain), ["--RECIPE=gpu64"])
    assert (ae.IMAGE_SIZE, ae.CHANNEL_MULT, ae.DATASET) == (64, (1, 2, 4), "cifar10")


def test_unknown_recipes_and_scripts_a_recipe_does_not_cover_are_one_line_errors():
    with pytest.raises(UserError, match="unknown --RECIPE='nope'; recipes: gpu64"):
        resolve_constants(vars(LDMEval), ["--RECIPE=nope"])
    other = {"__name__": "Diffusion_run_scripts.Other", "RECIPE": None, "EPOCHS": 3}
    with pytest.raises(UserError, match="recipe 'gpu64' has no settings for Other"):
        resolve_constants(other, ["--RECIPE=gpu64"])
    stale = {"__name__": "LDM_run_scripts.LDMEval", "RECIPE": None, "GUIDANCE": 2.0}
    with pytest.raises(UserError, match="sets STEPS, which LDMEval does not have"):
        resolve_constants(stale, ["--RECIPE=gpu64"])


def test_the_script_name_is_found_under_python_m():
    spec = SimpleNamespace(name="LDM_run_scripts.LDMEval")
    assert script_name({"__name__": "__main__", "__spec__": spec}) == "LDMEval"
    assert script_name({"__name__": "LDM_run_scripts.LDMEval"}) == "LDMEval"


def test_every_recipe_resolves_in_every_script_it_names():
    import importlib
    import importlib.util
    for name, recipe in RECIPES.items():
        assert recipe["about"]
        for script, values in recipe.items():
            if script == "about":
                continue
            module = next(importlib.import_module(f"{package}.{script}") for package in
                          ("GAN_run_scripts", "VAE_run_scripts", "Diffusion_run_scripts",
                           "LDM_run_scripts")
                          if importlib.util.find_spec(f"{package}.{script}") is not None)
            const = resolve_constants(vars(module), [f"--RECIPE={name}"])
            assert {k: getattr(const, k) for k in values} == values
        assert name in help_text(vars(module))


def test_mixed_constants_take_none_and_numbers():
    from VAE_run_scripts import vaemain
    from benchmarks import recipe_cost
    assert resolve_constants(vars(vaemain), ["--GRAD_CLIP=5"]).GRAD_CLIP == 5.0
    assert resolve_constants(vars(vaemain), ["--GRAD_CLIP=None"]).GRAD_CLIP is None
    assert resolve_constants(vars(vaemain), ["--GRAD_CLIP=auto"]).GRAD_CLIP == "auto"
    assert resolve_constants(vars(recipe_cost), ["--RESULTS=None"]).RESULTS is None
    assert resolve_constants(vars(LDMEval), ["--SAVE_ROOT=None"]).SAVE_ROOT == "None"


def test_the_gpu64_recipe_runs_end_to_end_at_a_tiny_size(tmp_path):
    """The recipe's shapes (64x64 images, f = 4, 16x16x4 latents, attention at 8 and 4, CFG 5,
    50 steps) with narrow networks and eight shapes images, on the CPU."""
    from utils.runs import load_checkpoint
    from utils.samples import load_samples_npz
    common = ["--RECIPE=gpu64", "--SAVE_ROOT", str(tmp_path), "--PRECISION=fp32",
              "--TENSORBOARD=False"]
    ae_run = LDMAutoencoderMain.main([*common, "--DATASET=shapes", "--N_TRAIN=16", "--BASE=8",
                                      "--DISC_WIDTH=8", "--BATCH_SIZE=8", "--EPOCHS=1"])
    config = json.loads((ae_run.plots / "config.json").read_text())
    assert (config["IMAGE_SIZE"], config["RECIPE"], config["ADV_START"]) == (64, "gpu64", 4000)
    run = LDMDiffusionMain.main([*common, "--BASE=16", "--BATCH_SIZE=8", "--EPOCHS=1",
                                 "--SAMPLE_STEPS=2"])
    state = load_checkpoint(run.checkpoint, "ldm")
    unet = state["model_args"]["unet"]
    assert (tuple(unet["attention_resolutions"]), unet["image_size"]) == ((8, 4), 16)
    LDMEval.main(["--RECIPE=gpu64", "--SAVE_ROOT", str(tmp_path), "--SCALES=(0, 5)",
                  "--STEPS=2", "--NOISED_T=(5, 999)", "--STRIP_IMAGES=1", "--STRIP_COLUMNS=2",
                  "--PER_CLASS=1", "--METRICS=False"])
    images, labels = load_samples_npz(run.plots / "eval" / "samples.npz")
    assert images.shape[1:] == (3, 64, 64) and len(labels) == len(set(labels.tolist()))


def test_the_cost_of_a_training_step_is_forward_and_backward():
    """A step's counted FLOPs are its forward pass's plus a backward pass of about twice that
    (each weight gradient and each input gradient costs one forward's multiply-adds)."""
    from benchmarks import recipe_cost
    from torch.utils.flop_counter import FlopCounterMode
    tiny = {"LDMAutoencoderMain": ["--BASE=8", "--BATCH_SIZE=2"],
            "LDMDiffusionMain": ["--BASE=16", "--BATCH_SIZE=4"]}
    const = resolve_constants(vars(recipe_cost), ["--TIME_CPU=False", "--RESULTS=None",
                                                  f"--OVERRIDES={tiny!r}"])
    row, unet = recipe_cost.stage2(const, torch.device("cpu"), (4, 16, 16))
    with FlopCounterMode(display=False) as forward:
        unet(torch.randn(4, 4, 16, 16), torch.zeros(4, dtype=torch.long),
             torch.zeros(4, dtype=torch.long))
    assert row["flops_step"] == pytest.approx(3 * forward.get_total_flops(), rel=0.05)
    assert row["steps"] == 200 * (50_000 // 4)  # the recipe's EPOCHS x steps per epoch
    rows = recipe_cost.main(["--TIME_CPU=False", "--RESULTS=None", f"--OVERRIDES={tiny!r}"])
    assert [r["pflop"] for r in rows] == pytest.approx(
        [(r["flops_step"] * r["steps"] + r["extra"]) / 1e15 for r in rows])
