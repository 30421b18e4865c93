import itertools

import pytest
import torch

from utils.errors import UserError
from utils.runs import (CHECKPOINT_VERSION, MetricsLog, find_run, load_checkpoint, load_state,
                        new_run, save_checkpoint)


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "epoch": 4, "config": {"LR": 0.1}, "rng":
             {"python": [3, [1, 2], None]}, "version": CHECKPOINT_VERSION, "kind": "gan",
             "model_args": {}, "data": {}, "step": 8}
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
    save_checkpoint({"epoch": 1, "config": {}, "version": CHECKPOINT_VERSION, "kind": "vae",
                     "model_args": {}, "data": {}, "step": 2}, tmp_path / "vae.pt")
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
    from train.common import until
    from train.options import Deadline
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


@pytest.mark.parametrize("tag", ["x/..", "/../../../tmp/X", "..", "a b", "-x", "x\n", "é" * 3,
                                 "a" * 101])
def test_a_tag_is_one_safe_path_component(tmp_path, tag):
    """--TAG=x/.. looped forever making folders; --TAG=/../../../tmp/X wrote outside
    SAVE_ROOT."""
    with pytest.raises(UserError, match="cannot be part of a run's folder name"):
        new_run(tmp_path, "vae", "shapes", tag)
    assert not (tmp_path / "saved_plots").exists()  # refused before anything was made


def test_vaemain_refuses_a_bad_tag_with_exit_status_2(tmp_path, monkeypatch, capsys):
    from utils.cli import run_cli
    from VAE_run_scripts import vaemain
    monkeypatch.setattr("sys.argv", ["vaemain", f"--SAVE_ROOT={tmp_path}", "--TAG=x/..",
                                     "--N_TRAIN=64", "--IMAGE_SIZE=16"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(vaemain.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TAG 'x/..'" in err[0]


def test_atomic_writes_replace_whole_files_and_clean_up_after_a_killed_writer(tmp_path):
    import subprocess
    import sys
    import threading

    from utils import files
    path = tmp_path / "index.html"
    files.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_open(path) as handle:
            handle.write(b"half")
            raise RuntimeError
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "index.html"]
    # two writers at once (two runs finishing together): the file is one page, never two
    pages = [f"<page {k}>" + "x" * 20000 for k in range(8)]
    threads = [threading.Thread(target=lambda p=p: [files.write_text(path, p)
                                                    for _ in range(20)]) for p in pages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text() in pages
    # temporary files left by a killed writer (gone process; the older format) are removed
    # at the next save of the same file; a live writer's is kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".latest.pt.{dead}.abc123.tmp"
    older = tmp_path / "latest.ptq1w2e3.tmp"
    live = tmp_path / f".latest.pt.{__import__('os').getpid()}.zzz.tmp"
    other = tmp_path / f".index.html.{dead}.abc.tmp"
    for temp in (stale, older, live, other):
        temp.write_bytes(b"partial")
    save_checkpoint({"epoch": 1, "config": {}}, tmp_path / "latest.pt")
    assert not stale.exists() and not older.exists() and live.exists() and other.exists()


def test_config_metrics_and_samples_are_written_atomically(tmp_path, monkeypatch):
    """Every file a run writes goes through utils.files.atomic_open (so a kill mid-write
    leaves the old file): config.json, JSON reports, the metrics log's rewrite, figures and
    samples.npz."""
    import matplotlib.pyplot as plt

    from utils import files
    from utils.config import save_config
    from utils.plots import _save
    from utils.runs import write_json
    from utils.samples import save_samples_npz
    written = []
    real = files.atomic_open

    def spy(path):
        written.append(path.name)
        return real(path)
    monkeypatch.setattr(files, "atomic_open", spy)
    save_config({"A": 1}, tmp_path / "config.json")
    write_json(tmp_path / "report.json", {"b": 2})
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"epoch": 1})
    log.truncate(1)
    _save(plt.figure(), tmp_path / "fig.png")
    save_samples_npz(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), tmp_path / "samples.npz")
    assert written == ["config.json", "report.json", "metrics.jsonl", "fig.png", "samples.npz"]
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_in_use_by_another_process_is_refused(tiny_gan, tmp_path):
    """Two --RESUME of one run at once interleaved their metrics and raced the checkpoint;
    the second is refused in one line, and a killed holder leaves no stale lock."""
    import subprocess
    import sys
    from pathlib import Path

    from GAN_run_scripts import ganmain
    ganmain.main(tiny_gan)
    run = find_run(tmp_path, "gan")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from utils.files import lock_run; "
         "lock_run(sys.argv[1], 'x'); print('locked', flush=True); time.sleep(120)",
         str(run.models)], cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"run {run.name} is in use by process "
                                            f"{holder.pid}"):
            ganmain.main([*tiny_gan, "--RESUME=latest", "--EPOCHS=2"])
        assert [r["epoch"] for r in MetricsLog(run.metrics_path).read()] == [1]
    finally:
        holder.kill()
        holder.wait()
    ganmain.main([*tiny_gan, "--RESUME=latest", "--EPOCHS=2"])  # the lock died with it
    assert [r["epoch"] for r in MetricsLog(run.metrics_path).read()] == [1, 2]


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tiny_gan, tmp_path):
    """What a cluster scheduler sends before it kills a job: the epoch's checkpoint is saved,
    one line says so, and the exit status is 130 as for Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    args = [a for a in tiny_gan if not a.startswith(("--EPOCHS", "--CHECKPOINT_EVERY"))]
    proc = subprocess.Popen([sys.executable, "-m", "GAN_run_scripts.ganmain", *args,
                             "--EPOCHS=10000", "--CHECKPOINT_EVERY=10000"],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "saved_plots" / "gan" / "001-gan-shapes-z16" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not MetricsLog(metrics).read() and time.monotonic() < deadline
           and proc.poll() is None):  # until an epoch is logged
        time.sleep(0.2)
    assert MetricsLog(metrics).read(), (proc.stderr.read() if proc.poll() is not None
                                        else "too slow")
    checkpoint = tmp_path / "saved_models" / "gan" / "001-gan-shapes-z16" / "latest.pt"
    assert not checkpoint.exists()  # none is due before epoch 10000
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted; checkpoint saved")
    assert load_checkpoint(checkpoint, "gan")["epoch"] >= 1
