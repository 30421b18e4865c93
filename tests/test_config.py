import json

import pytest

from utils.config import resolve_constants, save_config
from utils.errors import UserError

NS = {"__name__": "not_a_module", "EPOCHS": 5, "LR": 1e-3, "RESUME": None, "DATASET": "shapes",
      "BETAS": (0.5, 0.999), "FLIP": False, "lower": 1}


def test_both_override_forms_and_types():
    c = resolve_constants(NS, ["--EPOCHS=3", "--LR", "2", "--DATASET=digits", "--FLIP=True",
                               "--BETAS=(0.9, 0.99)", "--RESUME", "latest"])
    assert c.EPOCHS == 3 and isinstance(c.EPOCHS, int)
    assert c.LR == 2.0 and isinstance(c.LR, float)  # int accepted where the default is float
    assert c.DATASET == "digits" and c.FLIP is True and c.BETAS == (0.9, 0.99)
    assert c.RESUME == "latest"  # a None default accepts anything
    assert not hasattr(c, "lower")  # only UPPER_CASE names are constants
    assert NS["EPOCHS"] == 5  # the module itself is left alone


def test_none_default_takes_literals():
    assert resolve_constants(NS, ["--RESUME=7"]).RESUME == 7


def test_unknown_constant_suggests_closest():
    with pytest.raises(UserError, match="did you mean --EPOCHS"):
        resolve_constants(NS, ["--EPOCH=3"])


@pytest.mark.parametrize("args", [["--EPOCHS=3.5"], ["--EPOCHS=abc"], ["--FLIP=2"],
                                  ["--BETAS=1"], ["--EPOCHS"], ["EPOCHS=3"]])
def test_bad_values_are_errors(args):
    with pytest.raises(UserError):
        resolve_constants(NS, args)


def test_help_lists_constants_with_comments(capsys):
    import GAN_run_scripts.ganmain as ganmain
    with pytest.raises(SystemExit) as exit_info:
        ganmain.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--EPOCHS=" in out and "passes over the training set" in out
    assert "--DATASET='shapes'" in out


SCRIPTS = ["GAN_run_scripts.ganmain", "GAN_run_scripts.evalGan", "VAE_run_scripts.vaemain",
           "VAE_run_scripts.vaeExperiment", "VAE_run_scripts.vaeEval",
           "VAE_run_scripts.vaeEvalExperiments", "Diffusion_run_scripts.DiffusionMain",
           "Diffusion_run_scripts.DiffusionEval", "LDM_run_scripts.LDMAutoencoderMain",
           "LDM_run_scripts.LDMDiffusionMain", "LDM_run_scripts.LDMEval",
           "benchmarks.compare_families", "benchmarks.evaluate_samples",
           "benchmarks.gan_speed", "benchmarks.unet_speed", "benchmarks.ddp_speed",
           "benchmarks.diffusion_recipes"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_constant_of_every_script_has_a_meaning_in_help(name, capsys):
    """One constant per line with a trailing comment: --help explains each of them."""
    import importlib
    from utils.config import constants_of
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    constants = constants_of(vars(module))
    assert constants, name
    for constant in constants:
        line = next((line for line in lines if line.startswith(f"  --{constant}=")), "")
        assert "  # " in line and len(line.split("  # ", 1)[1]) > 3, (name, constant)


def test_imported_upper_case_names_are_not_constants():
    import Diffusion_run_scripts.DiffusionEval as script
    from utils.config import constants_of
    assert "FLOW_SAMPLERS" in vars(script)  # imported from models.samplers
    assert "FLOW_SAMPLERS" not in constants_of(vars(script))
    assert "SAMPLER" in constants_of(vars(script))


def test_config_json_round_trip(tmp_path):
    c = resolve_constants(NS, ["--EPOCHS=2"])
    save_config(c, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["EPOCHS"] == 2 and saved["BETAS"] == [0.5, 0.999]
