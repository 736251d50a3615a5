"""CLIP's byte-level BPE tokenizer without torch, reading the vocabulary file that travels in a model bundle.

It produces the same token ids as open_clip's ``tokenize`` (start and end tokens, truncation, zero padding).
"""

import functools
import gzip
import html
import os
from collections.abc import Sequence

import numpy as np

START, END = "<start_of_text>", "<end_of_text>"


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """The reversible map from the 256 byte values to printable unicode characters that CLIP's BPE works on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _word_pattern():
    try:
        import regex

        return regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                             r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    except ImportError:
        import re

        letters, digits = r"[^\W\d_]", r"\d"
        return re.compile(rf"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|{letters}+|{digits}|"""
                          rf"""(?:[^\s\w]|_)+""", re.IGNORECASE)


class ClipTokenizer:
    """Tokenises prompts into CLIP ids from ``bpe_simple_vocab_16e6.txt.gz`` (or an uncompressed copy)."""

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = 77) -> None:
        opener = gzip.open if str(vocab_path).endswith(".gz") else open
        with opener(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        alphabet = list(_byte_alphabet().values())
        words = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {word: i for i, word in enumerate(words)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.context_length = context_length
        self.pattern = _word_pattern()
        self._bpe = functools.lru_cache(maxsize=100_000)(self._merge)

    def _merge(self, token: str) -> tuple[str, ...]:
        """Apply the BPE merges to one word (already mapped to the byte alphabet); returns its subword strings."""
        parts = list(token[:-1]) + [token[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        alphabet = _byte_alphabet()
        ids = []
        for word in self.pattern.findall(_clean(text)):
            mapped = "".join(alphabet[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[part] for part in self._bpe(mapped))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """int64 array (len(texts), context_length): start, ids, end (kept when truncating), then zeros."""
        out = np.zeros((len(texts), self.context_length), np.int64)
        start, end = self.encoder[START], self.encoder[END]
        for row, text in enumerate(texts):
            ids = [start, *self.encode(text), end][:self.context_length]
            ids[-1] = end
            out[row, :len(ids)] = ids
        return out
