"""The text encoder's contrastive pre-training run (LDM_run_scripts/TextEncoderMain): a word
tokenizer built from the training captions, the project's CLIP text transformer and a small
image tower trained CLIP-style (models/contrastive.py) on the captioned scenes, and image-to-
text retrieval on the test split (seen and held-out compositions apart) after every epoch.

Every epoch draws new captions for the training scenes (caption seed = epoch), so the encoder
meets each scene under several templates and synonyms. The checkpoint (kind "text_encoder")
holds the tokenizer, the text transformer's arguments and weights, the whole pair (to resume)
and the optimiser; TextToImageMain reads the tokenizer and the text weights from it.
"""
import time

import numpy as np
import torch
from tqdm import tqdm

from models.clip import CLIPTextEncoder
from models.contrastive import ContrastivePair, ImageTower
from train.contrastive import contrastive_step, retrieval_accuracy
from utils.data import ImageData
from utils.runs import CHECKPOINT_VERSION, MetricsLog, Run, save_checkpoint
from utils.scenes import captions, held_out_scene, scene_targets
from utils.word_tokenizer import WordTokenizer

VOCABULARY_SEEDS = 4  # caption draws whose words make the vocabulary (every synonym appears)


def build_tokenizer(scenes: dict, seed: int) -> WordTokenizer:
    """The words of the training captions (several draws of templates and synonyms)."""
    texts = [c for k in range(VOCABULARY_SEEDS) for c in captions(scenes, seed * 1000 + k)]
    return WordTokenizer.build(texts)


def text_args(tokenizer: WordTokenizer, width: int, layers: int, heads: int) -> dict:
    """CLIPTextEncoder's arguments for a small transformer over this vocabulary."""
    return {"vocab": len(tokenizer), "width": width, "layers": layers, "heads": heads,
            "hidden": 4 * width, "positions": tokenizer.length}


def scene_keys(scenes: dict) -> list[tuple]:
    """A hashable description of each scene (its reader targets): retrieval's notion of 'the
    same scene'."""
    return list(zip(*(column.tolist() for column in scene_targets(scenes).values())))


def build_pair(tokenizer: WordTokenizer, const) -> ContrastivePair:
    text = CLIPTextEncoder(**text_args(tokenizer, const.WIDTH, const.LAYERS, const.HEADS))
    return ContrastivePair(text, ImageTower(3, const.IMAGE_WIDTH), const.EMBED_DIM)


def retrieval(pair: ContrastivePair, tokenizer: WordTokenizer, test: ImageData, seed: int
              ) -> dict:
    """Image-to-text retrieval on the test split, all of it and seen / held-out apart: each
    image against every test caption."""
    ids = tokenizer.encode_batch(captions(test.scenes, seed)).to(test.images.device)
    keys = scene_keys(test.scenes)
    held = np.array([held_out_scene(test.scenes, i) for i in range(len(keys))])
    out = {"retrieval": retrieval_accuracy(pair, test.images, ids, keys)}
    for name, rows in (("retrieval_seen", ~held), ("retrieval_held_out", held)):
        if rows.any():
            index = torch.as_tensor(np.flatnonzero(rows))
            out[name] = retrieval_accuracy(pair, test.images[index], ids[index],
                                           [keys[i] for i in index.tolist()])
    return out


def train_text_encoder(pair: ContrastivePair, opt, tokenizer: WordTokenizer, train: ImageData,
                       test: ImageData, run: Run, const, state: dict | None,
                       deadline, save, amp_dtype=None) -> dict:
    """Epochs of contrastive steps from the one after `state`'s, a metrics record and a
    checkpoint after each; stops early at the deadline. Returns the last record."""
    log = MetricsLog(run.metrics_path)
    start = state["epoch"] + 1 if state else 1
    log.truncate(start - 1)
    record = (log.read() or [{}])[-1]
    steps = len(train) // const.BATCH_SIZE
    for epoch in range(start, const.EPOCHS + 1):
        began = time.perf_counter()
        ids = tokenizer.encode_batch(captions(train.scenes, const.SEED * 1000 + epoch)).to(
            train.images.device)
        order = torch.randperm(len(train))
        losses = []
        for k in tqdm(range(steps), desc=f"epoch {epoch}/{const.EPOCHS}", dynamic_ncols=True,
                      leave=False):
            pick = order[k * const.BATCH_SIZE:(k + 1) * const.BATCH_SIZE]
            losses.append(contrastive_step(pair, opt, train.images[pick], ids[pick],
                                           amp_dtype))
        record = {"epoch": epoch, "loss": float(np.mean(losses)),
                  **retrieval(pair, tokenizer, test, const.SEED + 7),
                  "temperature": float(1 / pair.logit_scale.detach().exp()),
                  "seconds": time.perf_counter() - began}
        log.append(record)
        save(epoch, record)
        print(f"epoch {epoch}: loss {record['loss']:.3f}, retrieval "
              f"{record['retrieval']:.3f} (held-out {record.get('retrieval_held_out', 0):.3f})")
        if deadline.passed():
            print(f"time budget reached after epoch {epoch}")
            break
    return record


def checkpoint(pair: ContrastivePair, opt, tokenizer: WordTokenizer, epoch: int, const,
               data: dict, record: dict) -> dict:
    return {"version": CHECKPOINT_VERSION, "kind": "text_encoder", "epoch": epoch,
            "config": vars(const), "data": data, "tokenizer": tokenizer.to_dict(),
            "text_args": text_args(tokenizer, const.WIDTH, const.LAYERS, const.HEADS),
            "text": pair.text.state_dict(), "pair": pair.state_dict(),
            "optimizer": opt.state_dict(), "metrics": record,
            "rng": torch.get_rng_state()}


def save_text_encoder(run: Run, *args) -> None:
    save_checkpoint(checkpoint(*args), run.checkpoint)
