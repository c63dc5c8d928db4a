"""Texts that ship offline, for sample prompts, experiments and tests (pure Python, no downloads).

* :data:`PROSE`: short hand-written English sentences (sinks, token views).
* :func:`prose_paragraphs`: the prose paragraphs of Python's language reference (``pydoc_data``, part of the
  standard library), without code blocks or grammar rules: real running English text for long-context experiments
  such as StreamingLLM.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

PROSE = (
    "The history of the city begins in the early medieval period, when a small settlement grew up around a river crossing.",
    "She opened the window, listened to the rain for a while, and then went back to the letter she had been writing.",
    "Bees collect nectar from flowers and turn it into honey, which they store in wax cells inside the hive.",
    "After the long winter the farmers began to plough the fields and plant the seeds for the coming harvest.",
    "The committee met on Tuesday to discuss the budget, but the meeting ended without any agreement.",
    "Light from distant stars takes thousands of years to reach us, so we see them as they were long ago.",
    "He learned to play the violin as a child and still practises for an hour every evening after dinner.",
    "The museum's new exhibition shows paintings and drawings that have never been displayed in public before.",
)


@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs (> 200 characters) of the language reference in ``pydoc_data.topics``, in topic order."""
    import pydoc_data.topics as t  # noqa: PLC0415

    out = []
    for key in sorted(t.topics):
        for para in re.split(r"\n\s*\n", t.topics[key]):
            lines = para.strip().splitlines()
            if not lines or any(ln.startswith((" ", "\t", "*", "=", "-", ">>>")) for ln in lines):
                continue
            text = " ".join(ln.strip() for ln in lines)
            if len(text) > 200 and "::=" not in text:
                out.append(text)
    return tuple(out)


def long_prose(tokenizer: Any, n_tokens: int) -> str:
    """Consecutive prose paragraphs joined until the text has at least ``n_tokens`` tokens for ``tokenizer``."""
    text = ""
    for para in prose_paragraphs():
        text = f"{text}\n\n{para}" if text else para
        if len(tokenizer(text)["input_ids"]) >= n_tokens:
            return text
    return text
