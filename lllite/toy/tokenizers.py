"""Tokenizers for the toy world's captions, shared by both toys: every caption word is one token.

The toys' tokenizers are the real models' kinds (CLIP's byte-level BPE for the toy SDXL, Qwen's byte-level
BPE and T5's SentencePiece for the toy Anima), built offline with a vocabulary that is the byte alphabet
plus :data:`CAPTION_WORDS` as whole words.
"""
from __future__ import annotations

# Every word a toy caption can use becomes one token; anything else falls back to single characters.
CAPTION_WORDS = (
    "a", "an", "the", "of", "on", "photo", "picture", "shape", "background",
    "red", "green", "blue", "yellow",
    "circle", "square", "triangle",
)


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet of CLIP and GPT-2 style tokenizers: every byte gets a printable character,
    so any text can be tokenized."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _merge_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


def learn_bpe_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """The merges that make each word (given as its symbols) a single token, in the order BPE training
    finds them: the most frequent pair first, merged everywhere at once. Encoding a word then replays its
    own merges, and no other word's merge can split it."""
    merges = []
    while any(len(parts) > 1 for parts in words):
        counts: dict[tuple[str, str], int] = {}
        for parts in words:
            for pair in zip(parts, parts[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = max(counts, key=lambda pair: (counts[pair], pair))
        merges.append(best)
        words = [_merge_pair(parts, best) for parts in words]
    return merges
