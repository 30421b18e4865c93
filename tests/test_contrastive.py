"""CLIP-style pre-training pieces (models/contrastive.py) against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.clip import CLIPTextEncoder
from models.contrastive import (ContrastivePair, ImageTower, contrastive_loss, pooled_text)


def test_text_is_pooled_at_the_first_eos():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    ids = torch.tensor([[1, 7, 2, 0, 0], [1, 7, 8, 9, 2]])
    assert torch.equal(pooled_text(hidden, ids), torch.stack([hidden[0, 2], hidden[1, 4]]))


def test_the_loss_is_the_mean_of_both_directions_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.2, 0.7]])

    def ce(rows):  # -log softmax at the diagonal, by hand
        return sum(-(r[i] - math.log(sum(math.exp(v) for v in r))) for i, r in
                   enumerate(rows.tolist())) / len(rows)
    assert contrastive_loss(logits).item() == pytest.approx((ce(logits) + ce(logits.T)) / 2)
    assert contrastive_loss(100 * torch.eye(4)).item() < 1e-6  # matched pairs, far apart


def test_the_pair_embeds_to_unit_vectors_with_the_initial_temperature():
    torch.manual_seed(0)
    pair = ContrastivePair(CLIPTextEncoder(vocab=20, width=32, layers=1, heads=4, hidden=64,
                                           positions=8), ImageTower(width=8), embed_dim=16)
    ids = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0]])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    text, image = pair.embed_text(ids), pair.embed_image(x)
    assert torch.allclose(text.norm(dim=1), torch.ones(2)) and image.shape == (2, 16)
    logits = pair.logits(x, ids)
    assert torch.allclose(logits, (image @ text.T) / 0.07, rtol=1e-5)
    assert torch.allclose(F.normalize(text, dim=1), text)


def test_retrieval_counts_a_caption_of_the_same_scene_as_right():
    from train.contrastive import retrieval_accuracy

    class Fixed(torch.nn.Module):  # embeddings chosen by hand: image i is nearest caption order[i]
        def __init__(self, order):
            super().__init__()
            self.order = order

        def embed_text(self, ids):
            return torch.eye(4)[ids[:, 0]]

        def embed_image(self, x):
            return torch.eye(4)[self.order[:len(x)]]
    ids = torch.arange(4).view(4, 1)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    keys = [("a",), ("b",), ("a",), ("c",)]
    assert retrieval_accuracy(Fixed(torch.tensor([0, 1, 2, 3])), images, ids, keys) == 1.0
    # image 2 retrieves caption 0: another caption of the same scene, so still right
    assert retrieval_accuracy(Fixed(torch.tensor([0, 1, 0, 3])), images, ids, keys) == 1.0
    assert retrieval_accuracy(Fixed(torch.tensor([1, 1, 2, 0])), images, ids, keys) == 0.5


def test_contrastive_training_retrieves_scenes_better_than_chance():
    from train.contrastive import contrastive_step, retrieval_accuracy
    from utils.scenes import (attribute_targets, captions, factors_of, render_scenes,
                              sample_scenes)
    from utils.word_tokenizer import WordTokenizer
    torch.manual_seed(0)
    f = sample_scenes(1200, seed=7, two_share=0.0)
    texts, images = captions(f, 7), render_scenes(f, 32)
    tok = WordTokenizer.build(texts)
    ids = tok.encode_batch(texts)
    keys = [tuple(sorted(attribute_targets(factors_of(f, i)).items())) for i in range(1200)]
    pair = ContrastivePair(CLIPTextEncoder(vocab=len(tok), width=32, layers=1, heads=4,
                                           hidden=64, positions=tok.length),
                           ImageTower(width=8), embed_dim=32)
    opt = torch.optim.Adam(pair.parameters(), lr=2e-3)
    before = retrieval_accuracy(pair, images[1000:], ids[1000:], keys[1000:])
    for _ in range(4):
        for start in range(0, 1000, 100):
            contrastive_step(pair, opt, images[start:start + 100], ids[start:start + 100])
    after = retrieval_accuracy(pair, images[1000:], ids[1000:], keys[1000:])
    held = keys[1000:]  # chance: the share of captions that describe an image's own scene
    chance = sum(held.count(k) for k in held) / len(held) ** 2
    assert after > max(before, 3 * chance)
