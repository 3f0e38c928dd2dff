"""A CLIP byte-level BPE vocabulary learnt here, for the tiny checkpoints the project builds itself (SAM 3's
text encoder, SDXL's two): no tokenizer file can be downloaded, and a real CLIP vocabulary is not needed
to exercise the real loading and tokenising code."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

BOS, EOS = "<|startoftext|>", "<|endoftext|>"  # CLIP's special tokens


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    for s in symbols:
        if out and (out[-1], s) == pair:
            out[-1] += s
        else:
            out.append(s)
    return out


def learn_bpe(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges (most frequent pair first, ties by the pair itself) until every word is one symbol.
    Symbols follow CLIP: single characters, the last one of a word marked with `</w>`."""
    symbols = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while counts := Counter(pair for s in symbols.values() for pair in itertools.pairwise(s)):
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        symbols = {w: _merge(s, pair) for w, s in symbols.items()}
    return merges


def clip_vocab(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (every byte, every byte ending a word, the merges that make each of `words` one
    token, then BOS and EOS) and the merges. Any other text still tokenises, down to single bytes."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # byte-level symbols (ASCII letters as is)
    merges = learn_bpe(words)
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(p) for p in merges), BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges
