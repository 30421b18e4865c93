"""Contrastive pre-training of the scenes' text encoder (models/contrastive.py) and how it is
judged: image-to-text retrieval on held-out scenes.

Retrieval is counted right when the caption nearest to an image describes the same scene: the
same attributes (utils.scenes.attribute_targets of the caption and of the image's ground truth),
not the same string, since synonyms and templates give many captions of one scene and two
scenes can share every attribute.
"""
import torch

from models.contrastive import ContrastivePair, contrastive_loss
from utils.data import to_float
from utils.device import autocast


def contrastive_step(pair: ContrastivePair, opt: torch.optim.Optimizer, images: torch.Tensor,
                     ids: torch.Tensor, amp_dtype: torch.dtype | None = None) -> float:
    """One optimiser step on a batch of uint8 images and their caption ids (the forward pass
    under autocast to amp_dtype, the loss in fp32)."""
    with autocast(images.device, amp_dtype):
        logits = pair.logits(to_float(images), ids)
    loss = contrastive_loss(logits.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def retrieval_accuracy(pair: ContrastivePair, images: torch.Tensor, ids: torch.Tensor,
                       keys: list[tuple], batch_size: int = 500) -> float:
    """The share of images whose nearest caption (among `ids`, one per image) has the image's
    own attributes (`keys`: a hashable description of each image's scene, the same for its
    caption)."""
    was_training = pair.training
    pair.eval()
    try:
        text = torch.cat([pair.embed_text(ids[i:i + batch_size])
                          for i in range(0, len(ids), batch_size)])
        right = 0
        for i in range(0, len(images), batch_size):
            image = pair.embed_image(to_float(images[i:i + batch_size]))
            nearest = (image @ text.T).argmax(1).tolist()
            right += sum(keys[j] == keys[i + k] for k, j in enumerate(nearest))
    finally:
        pair.train(was_training)
    return right / len(images)
