import itertools

import pytest
import torch

from utils.errors import UserError
from utils.runs import (CHECKPOINT_VERSION, MetricsLog, find_run, load_checkpoint, load_state,
                        new_run, save_checkpoint)


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 4, "config": {"LR": 0.1}, "rng":
             {"python": [3, [1, 2], None]}, "version": CHECKPOINT_VERSION, "kind": "gan"}
    save_checkpoint(state, tmp_path / "a" / "latest.pt")
    loaded = load_checkpoint(tmp_path / "a" / "latest.pt")
    assert loaded["epoch"] == 4 and loaded["config"] == {"LR": 0.1}
    assert torch.equal(loaded["model"]["weight"], model.weight)


def test_failed_write_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint({"epoch": 1, "config": {}}, path)
    before = path.read_bytes()

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "config": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_missing_corrupt_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")


def test_older_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    save_checkpoint({"epoch": 1, "config": {}, "model_args": {}}, tmp_path / "v1.pt")
    with pytest.raises(UserError, match="format version 1, this code reads version 2"):
        load_checkpoint(tmp_path / "v1.pt")
    save_checkpoint({"epoch": 1, "config": {}, "version": CHECKPOINT_VERSION, "kind": "vae"},
                    tmp_path / "vae.pt")
    assert load_checkpoint(tmp_path / "vae.pt", "vae")["kind"] == "vae"
    with pytest.raises(UserError, match="is a 'vae' checkpoint, not 'gan'"):
        load_checkpoint(tmp_path / "vae.pt", "gan")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"config": {}, "model": torch.nn.Linear(1, 1)}, tmp_path / "pickle.pt")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "pickle.pt")  # weights_only=True rejects whole modules


def test_mismatched_state_is_a_clear_error():
    with pytest.raises(UserError, match="does not match the model"):
        load_state(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), "model")


def test_new_runs_are_numbered_and_never_reuse_a_folder(tmp_path):
    a = new_run(tmp_path, "gan", "shapes", "z100")
    b = new_run(tmp_path, "gan", "shapes", "z100")
    assert a.name == "001-gan-shapes-z100" and b.name == "002-gan-shapes-z100"
    assert a.plots.is_dir() and a.models.is_dir()
    (a.plots / "keep.txt").write_text("x")
    c = new_run(tmp_path, "gan", "digits", "")
    assert c.name == "003-gan-digits" and (a.plots / "keep.txt").read_text() == "x"


def test_find_run_by_name_number_and_latest_with_checkpoint(tmp_path):
    a = new_run(tmp_path, "vae", "shapes", "x")
    new_run(tmp_path, "vae", "shapes", "y")  # no checkpoint: not "latest"
    save_checkpoint({"epoch": 1, "config": {}}, a.checkpoint)
    assert find_run(tmp_path, "vae", "latest") == a
    assert find_run(tmp_path, "vae", "002").name == "002-vae-shapes-y"
    assert find_run(tmp_path, "vae", "001-vae-shapes-x") == a
    with pytest.raises(UserError, match="no single vae run"):
        find_run(tmp_path, "vae", "009")
    with pytest.raises(UserError, match="no gan run"):
        find_run(tmp_path, "gan", "latest")


def test_metrics_log_truncates_to_the_resumed_epoch(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "loss": 1.0 / epoch})
    log.truncate(2)
    assert [r["epoch"] for r in log.read()] == [1, 2]


def test_samples_npz_round_trip(tmp_path):
    from utils.samples import load_samples_npz, save_samples_npz
    images = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4])
    save_samples_npz(images, tmp_path / "s.npz", labels)
    back, back_labels = load_samples_npz(tmp_path / "s.npz")
    assert torch.equal(back, images) and torch.equal(back_labels, labels)


def test_draw_samples_in_chunks_of_the_device_size():
    """Small calls on a CPU, large on a GPU; the chunks come back whole and in order."""
    from utils.samples import draw_samples, sampling_chunk
    assert sampling_chunk(torch.device("cpu")) == 32
    assert sampling_chunk(torch.device("cuda")) == 250
    calls = []
    def generate(start, k):
        calls.append(k)
        return torch.arange(start, start + k, dtype=torch.uint8)[:, None]
    images, ms = draw_samples(generate, 70, sampling_chunk(torch.device("cpu")),
                              torch.device("cpu"))
    assert calls == [32, 32, 6] and ms >= 0
    assert torch.equal(images[:, 0], torch.arange(70, dtype=torch.uint8))


@pytest.mark.parametrize("minutes, batches", [(1.0, [9]), (100 / 60, [10, 5]), (0.05, [1])])
def test_deadline_cuts_the_running_epoch_and_stops_the_gan_loop(tmp_path, monkeypatch, tiny_gan,
                                                                minutes, batches):
    """Each batch takes 7 s of a fake clock; the epoch in progress when the deadline passes is
    cut short, evaluated and saved, and no further epoch starts."""
    import GAN_run_scripts.ganmain as ganmain
    import train.gan
    from train import common
    clock = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    real_step = train.gan.gan_step

    def timed_step(s, real):
        clock[0] += 7.0
        return real_step(s, real)
    monkeypatch.setattr(train.gan, "gan_step", timed_step)
    run = ganmain.main([*tiny_gan, "--N_TRAIN=320", "--EPOCHS=5", f"--MINUTES={minutes}"])
    records = MetricsLog(run.metrics_path).read()
    assert [r["step"] for r in records] == list(itertools.accumulate(batches))
    assert load_checkpoint(run.checkpoint)["epoch"] == len(batches)


def test_deadline_rejects_a_non_positive_budget_and_allows_none():
    from train.common import Deadline, until
    with pytest.raises(UserError, match="MINUTES"):
        Deadline(0)
    assert list(until(Deadline(None), range(3))) == [0, 1, 2]  # no budget: no limit
    assert list(until(None, range(3))) == [0, 1, 2]


@pytest.mark.parametrize("n, channels, nrow, padding, pad_value",
                         [(5, 3, 2, 2, 255), (8, 3, 8, 1, 0), (3, 1, 4, 2, 255), (7, 1, 3, 0, 0),
                          (3, 4, 2, 1, 0)])
def test_tile_lays_images_out_like_torchvision_make_grid(n, channels, nrow, padding, pad_value):
    """utils.plots.tile replaces torchvision's make_grid (to keep torchvision out of every
    script's start): the same mosaic, pixel for pixel, including a short last row and grey
    images turned RGB (other channel counts kept, as latents have 4)."""
    from torchvision.utils import make_grid

    from utils.plots import tile
    images = torch.randint(0, 256, (n, channels, 5, 4), dtype=torch.uint8)
    ours = tile(images, nrow, padding, pad_value)
    assert torch.equal(ours, make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value))
    columns = min(nrow, n)  # image k's top-left corner, counted by hand
    k = n - 1
    top, left = (k // columns) * (5 + padding) + padding, (k % columns) * (4 + padding) + padding
    shown = images[k].expand(max(channels, 3), -1, -1)  # grey as RGB
    assert torch.equal(ours[:, top:top + 5, left:left + 4], shown)
