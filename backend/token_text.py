"""Readable tokens, shared by every page: byte-level BPE marks decoded, sub-words grouped into words.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2) store each byte as a printable character: a space is
``Ġ``, a newline ``Ċ``, a tab ``ĉ``, and multi-byte characters are several such characters (``âĢĻ`` is ’).
SentencePiece marks a word start with ``▁``; WordPiece marks a continuation with ``##``. :func:`readable_tokens`
turns a prompt's tokens into the text they stand for; :func:`word_groups` and :func:`merge_words` merge the
pieces of a word (attention summed over the key's pieces and averaged over the query's pieces, as BertViz's
and Clark et al.'s word-level attention do: a row still sums to 1).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

import numpy as np

NEWLINE_MARK = "↵"
"""How a newline shows in a one-line label (axis ticks, dropdowns); token chips break the line instead."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of its ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


SPECIAL = re.compile(r"^(<\|[^|]*\|>|<[A-Za-z/_]+>|\[[A-Z]+\])$")
"""The shape of special tokens: ``<|endoftext|>``, ``<s>``, ``</s>``, ``[CLS]``, ``[SEP]``."""


def is_special(token: str) -> bool:
    """Whether a token is a special (control) token by its shape."""
    return bool(SPECIAL.match(token))


def is_byte_level(tokens: Sequence[str]) -> bool:
    """Whether a prompt's tokens look byte-level BPE (a space or newline mark occurs)."""
    return any(("Ġ" in t or "Ċ" in t) for t in tokens)


def _decode_byte_level(tok: str) -> str:
    table = _byte_decoder()
    if not all(ch in table for ch in tok):
        return tok  # a special token such as <|im_start|>
    return bytes(table[ch] for ch in tok).decode("utf-8", errors="replace")


def readable_tokens(tokens: Sequence[str]) -> list[str]:
    """The text each token stands for: byte-level marks decoded (``Ġthe`` -> `` the``, ``Ċ`` -> newline),
    SentencePiece's ``▁`` as a space; WordPiece tokens are kept as they are (``##ing`` says it continues)."""
    if is_byte_level(tokens):
        return [_decode_byte_level(t) for t in tokens]
    return [t.replace("▁", " ") if t.startswith("▁") else t for t in tokens]


def one_line(text: str) -> str:
    """A readable token as a one-line label: newlines as ↵, tabs as →, an all-space token as ␣."""
    text = text.replace("\n", NEWLINE_MARK).replace("\t", "→")
    return text if text.strip() else (text.replace(" ", "␣") or "∅")


def labels(tokens: Sequence[str]) -> list[str]:
    """One-line readable labels of a prompt's tokens (what figures and dropdowns show)."""
    return [one_line(t) for t in readable_tokens(tokens)]


def text_of(tokens: Sequence[str]) -> str:
    """The text a run of tokens stands for: byte-level and SentencePiece pieces concatenated, WordPiece tokens
    joined by spaces with ``##`` continuations glued on (``[CLS] playing cat``)."""
    raw = list(tokens)
    if is_byte_level(raw) or any(t.startswith("▁") for t in raw):
        return "".join(readable_tokens(raw))
    out = ""
    for t in raw:
        out += t[2:] if t.startswith("##") and out else (" " + t if out else t)
    return out


def preview(tokens: Sequence[str], limit: int = 60) -> str:
    """A prompt's first ``limit`` characters as one line (dropdown labels): ``text_of`` with newlines as ↵."""
    return one_line(text_of(tokens[:limit]).strip())[:limit]


def _is_punct(text: str) -> bool:
    s = text.strip()
    return bool(s) and all(unicodedata.category(c).startswith("P") for c in s)


def word_groups(tokens: Sequence[str], special: Sequence[bool] | None = None) -> list[list[int]]:
    """Token positions grouped into words. A word starts at a special token, after one, at a space or newline
    mark, at punctuation, and (WordPiece) wherever a token does not start with ``##``."""
    raw = list(tokens)
    special = list(special) if special is not None else [is_special(t) for t in raw]
    byte_level = is_byte_level(raw)
    sentencepiece = any(t.startswith("▁") for t in raw)
    text = readable_tokens(raw)
    groups: list[list[int]] = []
    for i, (t, shown) in enumerate(zip(raw, text)):
        if byte_level or sentencepiece:
            cont = bool(shown) and not shown[0].isspace() and not _is_punct(shown)
        else:
            cont = t.startswith("##")
        prev_breaks = i == 0 or special[i - 1] or _is_punct(text[i - 1]) or text[i - 1].endswith("\n")
        if groups and cont and not special[i] and not prev_breaks:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def word_text(tokens: Sequence[str], groups: Sequence[Sequence[int]]) -> list[str]:
    """The readable text of each word (WordPiece's ``##`` dropped inside a word)."""
    text = readable_tokens(tokens)
    out = []
    for g in groups:
        parts = [text[g[0]]] + [text[i][2:] if text[i].startswith("##") else text[i] for i in g[1:]]
        out.append("".join(parts))
    return out


def merge_words(pattern: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Word-level attention from ``pattern [..., query, key]``: keys summed over each word's pieces, queries
    averaged over them (rows still sum to what they summed to). Returns ``[..., words, words]``."""
    n = pattern.shape[-1]
    x = np.asarray(pattern, dtype=np.float64)
    if [i for idx in groups for i in idx] == list(range(n)):  # runs of consecutive positions, in order: O(T^2)
        starts = np.array([idx[0] for idx in groups], dtype=np.intp)
        counts = np.array([len(idx) for idx in groups], dtype=np.float64)
        out = np.add.reduceat(np.add.reduceat(x, starts, axis=-1), starts, axis=-2) / counts[:, None]
        return out.astype(pattern.dtype, copy=False)
    g = np.zeros((len(groups), n), dtype=np.float64)
    for w, idx in enumerate(groups):
        g[w, list(idx)] = 1.0
    avg = g / g.sum(axis=1, keepdims=True)
    out = avg @ x @ g.T  # two matmuls (a three-operand einsum would loop over w, q, k and v at once)
    return out.astype(pattern.dtype, copy=False)
