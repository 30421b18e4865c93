"""A word-level tokenizer built from a caption corpus (the captioned scenes, utils/scenes.py):
every word of the training captions gets an id, ':' and ',' are words of their own, and a
prompt becomes [<bos>, words..., <eos>, <pad>...] of a fixed length, as CLIP's tokenizer pads
(Radford et al. 2021). It is saved with a run (JSON) so the run reads prompts as it was trained.

A closed vocabulary is the honest choice for a model trained from scratch on a few dozen words:
a word it never saw has no meaning to it, so a prompt using one is refused with the nearest
known words, rather than silently mapped to an <unk> the model never learned.
"""
import difflib
import json
import re
from pathlib import Path

import torch

from utils import files
from utils.errors import UserError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_ALLOWED = re.compile(r"[a-z0-9 ,:'-]")


def split_words(text: str) -> list[str]:
    """Lower-cased words, with ':' and ',' as words of their own."""
    return text.lower().replace(":", " : ").replace(",", " , ").split()


class WordTokenizer:
    """Ids 0, 1, 2 are <pad>, <bos>, <eos>; then the vocabulary in sorted order."""

    def __init__(self, words: list[str], length: int):
        if length < 3:
            raise ValueError(f"a tokenizer needs a length of at least 3, got {length}")
        self.words = [PAD, BOS, EOS, *sorted(set(words) - {PAD, BOS, EOS})]
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.length = length

    @classmethod
    def build(cls, captions: list[str], length: int | None = None) -> "WordTokenizer":
        """The vocabulary of `captions`; length: the longest caption plus <bos> and <eos>
        (by default)."""
        split = [split_words(c) for c in captions]
        longest = max((len(s) for s in split), default=0)
        return cls([w for s in split for w in s], length or longest + 2)

    def __len__(self) -> int:
        return len(self.words)

    def check(self, text: str) -> list[str]:
        """The prompt's words, or a one-line UserError saying what is wrong with it."""
        if not isinstance(text, str) or not text.strip():
            raise UserError("the prompt is empty; say what to draw, e.g. 'a small red star in "
                            "the top left corner'")
        odd = sorted({c for c in text.lower() if not _ALLOWED.fullmatch(c)})
        if odd:
            raise UserError(f"the prompt has characters the tokenizer does not know: "
                            f"{''.join(odd)!r} (letters, digits, spaces and , : ' - only)")
        words = split_words(text)
        if len(words) > self.length - 2:
            raise UserError(f"the prompt has {len(words)} words; this model reads at most "
                            f"{self.length - 2}")
        for word in words:
            if word not in self.ids:
                near = difflib.get_close_matches(word, self.words[3:], n=3)
                hint = f"; did you mean {' or '.join(near)}?" if near else ""
                raise UserError(f"the model never saw the word {word!r} in training{hint} "
                                f"(it knows {len(self) - 3} words)")
        return words

    def encode(self, text: str) -> torch.Tensor:
        """(length,) ids of a prompt (checked: see check)."""
        return self._ids(self.check(text))

    def null(self) -> torch.Tensor:
        """The ids of the empty caption: the unconditional input of classifier-free guidance."""
        return self._ids([])

    def _ids(self, words: list[str]) -> torch.Tensor:
        ids = [self.ids[BOS], *(self.ids[w] for w in words), self.ids[EOS]]
        return torch.tensor(ids + [self.ids[PAD]] * (self.length - len(ids)), dtype=torch.long)

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """(B, length) ids; an empty string is the null caption (caption dropout)."""
        return torch.stack([self.encode(t) if t else self.null() for t in texts])

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """encode_batch: a tokenizer is called on prompts as the pipeline calls CLIP's."""
        return self.encode_batch(texts)

    def decode(self, ids) -> str:
        """The text of ids (specials dropped; ':' and ',' joined to the word before)."""
        words = [self.words[int(i)] for i in ids if int(i) > 2]
        return " ".join(words).replace(" :", ":").replace(" ,", ",")

    def to_dict(self) -> dict:
        return {"words": self.words[3:], "length": self.length}

    @classmethod
    def from_dict(cls, data: dict) -> "WordTokenizer":
        try:
            return cls(list(data["words"]), int(data["length"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"not a saved word tokenizer ({type(err).__name__}: {err})") from None

    def save(self, path: Path) -> None:
        files.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "WordTokenizer":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read the tokenizer {path}: {err}") from None
