"""Bad input gets one line and exit status 2, never a traceback, and nothing on disk is lost: a
test per class of input that once gave a traceback (constants, devices, image files, damaged
checkpoints and logs, a full disk, foreign weight files)."""
import errno
import importlib
import io

import pytest
import torch
from PIL import Image

from utils.cli import run_cli

from utils.errors import UserError

GAN = ["--IMAGE_SIZE=16", "--N_TRAIN=128", "--WIDTH=8", "--BATCH_SIZE=32", "--EPOCHS=1",
       "--N_FIXED=8", "--PROGRESSION_ROWS=4", "--LATENT_DIM=16", "--PRECISION=fp32"]


def _one_line_exit_2(script: str, argv: list, monkeypatch, capsys) -> str:
    """Run `script` as its command line does; return its one error line."""
    module = importlib.import_module(script)
    monkeypatch.setattr("sys.argv", [script, *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("script, argv, message", [
    ("GAN_run_scripts.ganmain", ["--MINUTES=nan"], "MINUTES must be None or a number > 0"),
    ("GAN_run_scripts.ganmain", ["--N_TRAIN=abc"], "N_TRAIN must be None or a whole number"),
    ("GAN_run_scripts.ganmain", ["--N_TRAIN=0"], "N_TRAIN must be None or a whole number >= 1"),
    ("GAN_run_scripts.ganmain", ["--SEED=-1"], "SEED must be a whole number >= 0"),
    ("GAN_run_scripts.ganmain", ["--LR=1e999"], "LR must be a finite number"),
    ("GAN_run_scripts.ganmain", ["--PROGRESSION_ROWS=0"], "PROGRESSION_ROWS must be a whole"),
    ("VAE_run_scripts.vaemain", ["--TAG=[1]"], "TAG must be None or a name"),
    ("VAE_run_scripts.vaemain", ["--N_TRAIN=1", "--IMAGE_SIZE=16"], "at least 2"),
    ("GAN_run_scripts.evalGan", ["--GRID_SIZE=0"], "GRID_SIZE must be a whole number >= 1"),
    ("GAN_run_scripts.evalGan", ["--STEPS=0"], "STEPS must be a whole number >= 1"),
    ("Diffusion_run_scripts.DiffusionEval", ["--COMPARE=()"], "COMPARE must list at least one"),
    ("LDM_run_scripts.LDMEval", ["--SCALES=()"], "SCALES must list at least one"),
    ("GAN_run_scripts.ganmain", ["--DEVICE=mps"], "MPS is not available"),
    ("GAN_run_scripts.ganmain", ["--DEVICE=xpu"], "is not supported"),
])
def test_constants_out_of_range_are_one_line(tmp_path, monkeypatch, capsys, script, argv,
                                              message):
    if argv == ["--DEVICE=mps"] and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    line = _one_line_exit_2(script, [f"--SAVE_ROOT={tmp_path}", *argv], monkeypatch, capsys)
    assert message in line


def _png(path, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "not an image", "bomb"])
def test_an_unreadable_image_in_a_folder_is_named_in_one_line(tmp_path, monkeypatch, damage):
    from utils.data import load_dataset
    for k in range(3):
        _png(tmp_path / "cats" / f"{k}.png")
        _png(tmp_path / "dogs" / f"{k}.png", mode="L")
    bad = tmp_path / "dogs" / "bad.jpg"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        Image.new("RGB", (64, 64), 50).save(bad, quality=90)
        bad.write_bytes(bad.read_bytes()[:300])
    elif damage == "not an image":
        bad.write_text("hello")
    else:  # more pixels than Pillow's decompression-bomb limit allows
        Image.new("RGB", (64, 64), 50).save(bad)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)
    with pytest.raises(UserError, match=r"bad\.jpg: not a readable image"):
        for split in ("train", "test"):  # the seeded hold-out puts it in one of them
            load_dataset("folder", split, image_size=8, root=tmp_path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "bomb"])
def test_an_unreadable_init_image_is_one_line(tmp_path, monkeypatch, damage):
    from train.stable_diffusion import load_init_image
    path = tmp_path / "init.jpg"
    Image.new("RGB", (64, 64), 50).save(path, quality=90)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)
    with pytest.raises(UserError, match="INIT_IMAGE .* not a readable image"):
        load_init_image(path, 16, 16)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The run's first checkpoint was written; the disk then fills up: one line, exit 2, the
    checkpoint intact (writes go to a temporary file first)."""
    from GAN_run_scripts import ganmain
    from utils import files
    from utils.runs import find_run, load_checkpoint
    ganmain.main([f"--SAVE_ROOT={tmp_path}", *GAN])
    checkpoint = find_run(tmp_path, "gan").checkpoint
    before = checkpoint.read_bytes()

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(files, "atomic_open", full)
    line = _one_line_exit_2("GAN_run_scripts.ganmain", [f"--SAVE_ROOT={tmp_path}",
                                                        "--RESUME=latest", "--EPOCHS=2"],
                            monkeypatch, capsys)
    assert "could not write" in line and "No space left on device" in line
    assert checkpoint.read_bytes() == before and load_checkpoint(checkpoint)["epoch"] == 1


def test_evalgan_without_a_readable_metrics_log_still_draws_its_samples(tmp_path, capsys):
    from GAN_run_scripts import evalGan, ganmain
    from utils.runs import find_run
    ganmain.main([f"--SAVE_ROOT={tmp_path}", *GAN])
    run = find_run(tmp_path, "gan")
    for damage in ("missing", "short"):
        if damage == "missing":
            run.metrics_path.unlink()
        else:
            run.metrics_path.write_text('{"epoch": 1, "train_g_lo')  # torn by a kill
        evalGan.main([f"--SAVE_ROOT={tmp_path}", "--N_SAMPLES=0", "--GRID_SIZE=2",
                      "--N_PAIRS=1", "--STEPS=2"])
        assert (run.plots / "eval" / "samples_grid.png").is_file()
        assert (run.plots / "eval" / "progression.png").is_file()
        assert "no readable metrics.jsonl records" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("model_args"), "has no model_args"),
    (lambda s: (s.pop("epoch"), s.pop("data")), "has no data, epoch"),
    (lambda s: s.update(model_args=[1, 2]), "model_args of the wrong type"),
    (lambda s: s["model_args"].update(generator={"bogus": 1}), "cannot be rebuilt"),
    (lambda s: s["model_args"].pop("discriminator"), "cannot be rebuilt"),
])
def test_a_checkpoint_that_loads_but_lacks_keys_or_has_bad_arguments(tmp_path, monkeypatch,
                                                                     capsys, damage, message):
    from GAN_run_scripts import ganmain
    from utils.runs import find_run
    ganmain.main([f"--SAVE_ROOT={tmp_path}", *GAN])
    path = find_run(tmp_path, "gan").checkpoint
    state = torch.load(path, weights_only=True)
    damage(state)
    torch.save(state, path)
    line = _one_line_exit_2("GAN_run_scripts.evalGan", [f"--SAVE_ROOT={tmp_path}"],
                            monkeypatch, capsys)
    assert message in line


def test_foreign_weights_and_bad_diffusers_configs_are_one_line(tmp_path):
    from train.sd_loading import folder_model_args, read_state_dict
    foreign = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "optimizer": io.BytesIO}, foreign)
    with pytest.raises(UserError) as err:
        read_state_dict(foreign)
    assert "\n" not in str(err.value) and "could not be read as weights" in str(err.value)
    for text in ("{not json", '{"block_out_channels": []}', '{"in_channels": 4}', "[1]"):
        (tmp_path / "folder" / "unet").mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / "unet" / "config.json").write_text(text)
        with pytest.raises(UserError, match="is not a diffusers v1 config"):
            folder_model_args(tmp_path / "folder")


def test_run_cli_folds_a_long_message_onto_one_line(monkeypatch, capsys):
    def main():
        raise UserError("first line\n  second line\n\tthird")
    with pytest.raises(SystemExit):
        run_cli(main)
    assert capsys.readouterr().err == "error: first line second line third\n"
