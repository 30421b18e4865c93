"""Named recipes: sets of run-script constants chosen together, applied with --RECIPE=<name>.

A recipe sets constants of the scripts it names before the command line is read, so anything
typed after it still wins (`--RECIPE=gpu64 --DATASET=shapes --EPOCHS=1`). The run's
config.json holds the constants it ran with, so a resumed run needs no --RECIPE. Each recipe
is explained, with what it costs and what it was measured to do, in docs/recipes.md.
"""
from utils.errors import UserError

RECIPES = {
    # The reference write-up's GPU configuration: CIFAR-10 upscaled to 64x64, a VAE-GAN
    # autoencoder with f = 4 (64x64x3 -> 16x16x4 latents, Rombach et al. 2022, Table 8's f4
    # models) and a class-conditional latent UNet sampled with CFG 5 and 50 steps. Sized for
    # one CUDA GPU; its cost is estimated by benchmarks/recipe_cost.py (docs/recipes.md).
    "gpu64": {
        "about": "CIFAR-10 at 64x64 on one CUDA GPU: VAE-GAN f=4 + latent UNet, CFG 5, 50 steps",
        "LDMAutoencoderMain": {
            "DATASET": "cifar10", "IMAGE_SIZE": 64, "BASE": 64, "CHANNEL_MULT": (1, 2, 4),
            "BLOCKS": 2, "DISC_WIDTH": 64, "EPOCHS": 40, "BATCH_SIZE": 64, "LR": 4.5e-4,
            "DISC_LR": 4.5e-4, "KL_WARMUP_STEPS": 2000,
            # Rombach et al. start the discriminator late (disc_start 50001 in their configs);
            # here after about five epochs of 782 steps, once reconstructions are sharp.
            "ADV_START": 4000, "ADV_WARMUP_STEPS": 1000, "EMA_DECAY": 0.999,
        },
        "LDMDiffusionMain": {
            "BASE": 128, "CHANNEL_MULT": (1, 2, 2), "BLOCKS": 2, "ATTENTION": (8, 4),
            "HEADS": 4, "DROPOUT": 0.1, "EPOCHS": 200, "BATCH_SIZE": 128, "LR": 2e-4,
            "WARMUP_STEPS": 1000, "EMA_DECAY": 0.9999, "GUIDANCE": 5.0, "SAMPLE_STEPS": 50,
        },
        "LDMEval": {"GUIDANCE": 5.0, "STEPS": 50},
    },
}


def recipe_constants(name, script: str, defaults: dict) -> dict:
    """The constants recipe `name` sets for `script` (its module's last name), checked against
    the script's own constants; a one-line UserError for an unknown recipe or script."""
    if name not in RECIPES:
        raise UserError(f"unknown --RECIPE={name!r}; recipes: {', '.join(sorted(RECIPES))} "
                        f"(docs/recipes.md)")
    recipe = RECIPES[name]
    if script not in recipe:
        scripts = ", ".join(s for s in recipe if s != "about")
        raise UserError(f"recipe {name!r} has no settings for {script}; it sets {scripts}")
    values = recipe[script]
    unknown = sorted(set(values) - set(defaults))
    if unknown:  # a recipe out of step with its script: a bug, caught by tests/test_recipes.py
        raise UserError(f"recipe {name!r} sets {', '.join(unknown)}, which {script} does not have")
    return dict(values)
