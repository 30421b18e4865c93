"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), as Stable Diffusion v1 uses it.

Text is cleaned (ftfy's fix_text, HTML entities unescaped twice, runs of whitespace collapsed) and
lower-cased, split by CLIP's pre-tokenizer pattern (contractions, runs of letters, single
digits, runs of other non-space characters), each piece's UTF-8 bytes mapped to printable
characters, and merged by byte-pair encoding with `</w>` marking the end of a word. A prompt
becomes start (49406), at most 75 tokens, end (49407), padded with the end token to 77.

That cleaning is OpenAI CLIP's own (convention "clip", the default, what SD v1 was trained with).
transformers' fast CLIPTokenizer (what AutoTokenizer gives a diffusers pipeline) normalises
differently: Unicode NFC, whitespace collapsed, lower-cased, no ftfy and no HTML unescaping. The
two agree on ordinary prompts and differ on curly quotes, `&amp;`-style entities, ligatures,
full-width letters and control characters; convention "transformers" follows the fast
tokenizer, for comparing images with a diffusers pipeline token for token.

The vocabulary comes from a diffusers/transformers folder (`vocab.json` + `merges.txt`) or from
CLIP's original `bpe_simple_vocab_16e6.txt.gz` (merges only; the vocabulary is built from them
the way CLIP builds it).
"""
import gzip
import html
import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import regex
import torch

from utils.errors import UserError

CONTEXT_LENGTH = 77  # tokens per prompt, start and end included (SD v1.5's tokenizer config)
N_MERGES = 49152 - 256 - 2  # merges CLIP uses from its merges file
START, END = "<|startoftext|>", "<|endoftext|>"
_PATTERN = regex.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                         r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", regex.IGNORECASE)


@lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable characters: bytes that print as
    themselves (! to ~, inverted exclamation to not-sign, registered-sign to y-umlaut) keep
    their code point, the others get 256, 257, ... in byte order (the GPT-2/CLIP convention)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


CONVENTIONS = ("clip", "transformers")  # how text is cleaned before it is split


def clean(text: str, convention: str = "clip") -> str:
    """clip: ftfy.fix_text, HTML entities unescaped (twice, as CLIP does), whitespace
    collapsed, lower-cased. transformers: the fast CLIPTokenizer's normaliser (NFC, whitespace
    collapsed, lower-cased)."""
    if convention == "transformers":
        return regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
    import ftfy
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class CLIPTokenizer:
    """encode(text) -> BPE ids; __call__(prompts) -> (B, 77) int64 tensor for the text model."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
                 convention: str = "clip"):
        if convention not in CONVENTIONS:
            raise UserError(f"tokenizer convention {convention!r} is not one of "
                            f"{', '.join(CONVENTIONS)}")
        self.vocab, self.convention = vocab, convention
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.start, self.end = vocab[START], vocab[END]
        self._cache = {START: START, END: END}

    @classmethod
    def from_merges(cls, merges: list[tuple[str, str]]) -> "CLIPTokenizer":
        """The vocabulary CLIP builds from its merges: the 256 byte characters, the same with
        `</w>`, one token per merge, then the start and end tokens."""
        chars = list(byte_to_char().values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [START, END]
        return cls({t: i for i, t in enumerate(tokens)}, merges)

    @classmethod
    def load(cls, path: str | Path) -> "CLIPTokenizer":
        """From a folder with vocab.json and merges.txt, or tokenizer.json (a diffusers model's
        `tokenizer/`, or the model folder itself), or from CLIP's bpe_simple_vocab_16e6.txt.gz."""
        path = Path(path)
        if path.is_dir() and (path / "tokenizer").is_dir():
            path = path / "tokenizer"
        try:
            if path.is_dir() and not (path / "vocab.json").is_file() \
                    and (path / "tokenizer.json").is_file():  # one file: vocab and merges
                model = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]
                merges = [m.split() if isinstance(m, str) else m for m in model["merges"]]
                return cls(model["vocab"], [tuple(m) for m in merges[:N_MERGES]])
            if path.is_dir():
                vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
                lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
                return cls(vocab, _merge_pairs(lines))
            lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
            return cls.from_merges(_merge_pairs(lines))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"TOKENIZER {path}: not a CLIP vocabulary (vocab.json + merges.txt, "
                            f"tokenizer.json, or bpe_simple_vocab_16e6.txt.gz): "
                            f"{type(err).__name__}: {err}") from None

    def bpe(self, piece: str) -> str:
        """The piece's BPE tokens, space separated: adjacent symbols are merged, lowest merge
        rank first, until no adjacent pair is a merge."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = " ".join(word)
        return self._cache[piece]

    def encode(self, text: str) -> list[int]:
        """Token ids of the cleaned text, without start and end."""
        table = byte_to_char()
        ids = []
        for piece in _PATTERN.findall(clean(text, self.convention)):
            chars = "".join(table[b] for b in piece.encode("utf-8"))
            ids += [self.vocab[t] for t in self.bpe(chars).split(" ")]
        return ids

    def __call__(self, prompts: list[str] | str, length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """Start, the first length - 2 tokens, end, padded with the end token: (B, length)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = []
        for text in prompts:
            ids = [self.start, *self.encode(text)[:length - 2], self.end]
            rows.append(ids + [self.end] * (length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


def _merge_pairs(lines: list[str]) -> list[tuple[str, str]]:
    """The merges of a merges file: its first line is a header; CLIP uses N_MERGES of them."""
    pairs = [tuple(line.split()) for line in lines[1:N_MERGES + 1] if line.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError("no merge pairs")
    return pairs
