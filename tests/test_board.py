"""TensorBoard logs, read back with TensorBoard's own event reader."""
import json

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from utils import board  # noqa: E402
from utils.runs import find_run  # noqa: E402


def _events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_a_resumed_run_appends_without_duplicate_or_orphaned_steps(tiny_gan, tmp_path):
    from GAN_run_scripts import ganmain
    ganmain.main([*tiny_gan, "--EPOCHS=2"])
    run = find_run(tmp_path, "gan")
    first = [r["step"] for r in map(json.loads, run.metrics_path.read_text().splitlines())]
    # an interrupted process logged an epoch past the checkpoint: resume must drop it
    writer = board.open_board(run.plots, True)
    writer.add_scalar("train_g_loss", 123.0, first[-1] + 2)
    writer.close()
    ganmain.main([*tiny_gan, "--EPOCHS=3", "--RESUME=latest"])
    acc = _events(run.plots / board.FOLDER)
    tags = acc.Tags()
    assert {"train_g_loss", "test_g_loss", "seconds"} <= set(tags["scalars"])
    steps = [e.step for e in acc.Scalars("train_g_loss")]
    assert len(steps) == 3 and steps == sorted(set(steps)) and steps[:2] == first
    assert all(e.value != 123.0 for e in acc.Scalars("train_g_loss"))
    images = acc.Images("samples")
    assert [e.step for e in images] == steps  # one sample grid per epoch
    assert images[0].width > images[0].height > 0  # a grid of the progression rows


def test_eval_adds_the_constants_and_final_metrics_as_hparams(tiny_gan, tmp_path, monkeypatch):
    """write_metrics (every eval script's scoring) puts the scores beside the training log."""
    import torch
    from GAN_run_scripts import ganmain
    from train import evaluator
    ganmain.main(tiny_gan)
    run = find_run(tmp_path, "gan")
    scores = {"fid": 12.5, "kid": 0.1, "kid_std": 0.01, "precision": 0.5, "recall": 0.25,
              "samples": 10, "extractor": "stand-in",
              "classes": {"total_variation": 0.2, "confident": 0.7},
              "real_vs_real": {"fid": 1.5, "class_total_variation": 0.03}}
    monkeypatch.setattr(evaluator, "evaluate_samples", lambda *a, **k: dict(scores))
    evaluator.write_metrics(torch.zeros(10, 3, 16, 16), None, "shapes", run.plots / "eval",
                            torch.device("cpu"), extractor="evaluator", save_root=tmp_path,
                            data_root="data")
    acc = _events(run.plots / board.FOLDER / "eval")
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    assert b"LATENT_DIM" in plugins["_hparams_/session_start_info"]  # the run's constants
    assert {"final/fid", "final/fid_floor", "final/precision"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("final/fid")[0].value == pytest.approx(12.5)
    assert acc.Scalars("final/fid_floor")[0].value == pytest.approx(1.5)
    assert acc.Scalars("final/class_total_variation")[0].value == pytest.approx(0.2)


def test_off_or_missing_package_logs_nothing_and_training_runs(tiny_gan, tmp_path, capsys,
                                                               monkeypatch):
    from GAN_run_scripts import ganmain
    ganmain.main([*tiny_gan, "--TENSORBOARD=False"])
    assert not (find_run(tmp_path, "gan").plots / board.FOLDER).exists()
    monkeypatch.setattr(board, "_writer_class", lambda: None)
    monkeypatch.setattr(board, "_NOTED", [])
    ganmain.main(tiny_gan)
    assert not (find_run(tmp_path, "gan").plots / board.FOLDER).exists()
    assert "tensorboard package is not installed" in capsys.readouterr().out
