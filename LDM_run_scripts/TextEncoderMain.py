"""Text-to-image from scratch, stage 0: the text encoder. A word tokenizer built from the
captioned scenes' training captions, and the project's CLIP text transformer pre-trained
CLIP-style against a small image tower (Radford et al. 2021): matching images and captions are
pulled together, the rest of the batch pushed apart.

    python -m LDM_run_scripts.TextEncoderMain
    python -m LDM_run_scripts.TextEncoderMain --EPOCHS=12 --WIDTH=96
    python -m LDM_run_scripts.TextEncoderMain --RESUME=latest --EPOCHS=12

Then LDMAutoencoderMain --DATASET=scenes --EPOCHS=3 (stage 1) and TextToImageMain (stage 2);
the whole recipe is in docs/text_to_image.md. Writes saved_plots/text_encoder/<run>/:
losses.png (the contrastive loss and image-to-text retrieval on the test split, seen and
held-out compositions apart), config.json, metrics.jsonl; the tokenizer and weights to
saved_models/text_encoder/<run>/.
"""
import torch

from train.options import Deadline
from train.text_encoder import (build_pair, build_tokenizer, save_text_encoder,
                                train_text_encoder)
from utils.cli import run_cli
from utils.config import check_positive, resolve_constants
from utils.data import DataSpec
from utils.plots import save_curves
from utils.run_index import write_indexes
from utils.runs import MetricsLog, load_state
from utils.session import open_run, resume_run, seed_and_device
from utils.word_tokenizer import WordTokenizer

N_TRAIN = 20000  # training scenes (the test split has 2000)
IMAGE_SIZE = 32  # pixels
WIDTH = 64  # text transformer width
LAYERS = 2  # text transformer layers
HEADS = 4  # text transformer attention heads
IMAGE_WIDTH = 32  # image tower's first conv width (then x2, x4)
EMBED_DIM = 64  # shared embedding width
EPOCHS = 6  # passes over the training scenes, each with newly drawn captions
BATCH_SIZE = 256  # image-caption pairs per step (the contrast is within a batch)
LR = 1e-3  # Adam learning rate
SEED = 0  # seeds torch and the scenes
DEVICE = "auto"  # auto, cpu, cuda
PRECISION = "auto"  # auto (bf16 autocast where fast), bf16, fp32
RESUME = None  # None for a new run; "latest" or a run name to continue it
MINUTES = None  # stop after the epoch in which this many minutes have passed
SAVE_ROOT = "."  # saved_plots/ and saved_models/ are created here


def main(argv=None):
    """Pre-train (or resume) the text encoder; returns the run."""
    const = resolve_constants(globals(), argv)
    run, state, const = resume_run(const, "text_encoder", argv)
    check_positive(const, "N_TRAIN", "WIDTH", "LAYERS", "HEADS", "EMBED_DIM", "EPOCHS",
                   "BATCH_SIZE", "LR")
    deadline = Deadline(const.MINUTES)
    device, amp_dtype = seed_and_device(const)
    spec = DataSpec("scenes", const.IMAGE_SIZE, 3, const.SEED)
    train, test = spec.load("train", const.N_TRAIN), spec.held_out()
    tokenizer = (WordTokenizer.from_dict(state["tokenizer"]) if state
                 else build_tokenizer(train.scenes, const.SEED))
    pair = build_pair(tokenizer, const).to(device)
    opt = torch.optim.Adam(pair.parameters(), lr=const.LR)
    if state:
        load_state(pair, state["pair"], "the contrastive pair")
        load_state(opt, state["optimizer"], "the optimiser")
        torch.set_rng_state(state["rng"])
    run = open_run(const, "text_encoder", f"w{const.WIDTH}", run, dataset="scenes")
    print(f"{len(tokenizer) - 3} words, captions up to {tokenizer.length - 2} words; "
          f"{len(train)} training scenes")

    def save(epoch, record):
        save_text_encoder(run, pair, opt, tokenizer, epoch, const, spec.as_dict(), record)
        save_curves(MetricsLog(run.metrics_path).read(), [("contrastive loss", ["loss"]),
                              ("image-to-text retrieval (test)",
                               ["retrieval_seen", "retrieval_held_out"])],
                    run.plots / "losses.png", title=f"{run.name}: pre-training")
    record = train_text_encoder(pair.train(), opt, tokenizer, train.to(device), test.to(device),
                                run,
                                const, state, deadline, save, amp_dtype)
    write_indexes(run.plots)
    print(f"done: retrieval {record.get('retrieval', float('nan')):.3f} on the test split; "
          f"figures in {run.plots}")
    return run


if __name__ == "__main__":
    run_cli(main)
