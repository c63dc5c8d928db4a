"""Built-in input domains for active vs dormant heads (Guo et al., 2024, "Active-Dormant Attention Heads").

A head that puts most of its attention on the first token is *dormant* on that input (it adds almost
nothing to the residual stream); the same head may be *active* on inputs of another domain. The lab
measures the first-token sink of every head on these sets and on the run's own inputs.
``random`` is not text: the worker draws ``RANDOM_COUNT`` sequences of ``RANDOM_LENGTH`` token ids
uniformly from the model's vocabulary (special tokens excluded; seed ``RANDOM_SEED``) and adds the
special tokens the tokenizer adds to any text.
"""

from __future__ import annotations

PROSE = (
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "After the rain stopped, the children ran outside to splash in the puddles.",
    "She folded the letter carefully and placed it in the drawer beside her bed.",
    "Most of the village gathered in the square to hear the mayor's announcement.",
    "The river had flooded twice that spring, and the farmers worried about their crops.",
    "He had never seen the ocean before, and the sound of the waves surprised him.",
    "Our train was delayed by an hour, so we bought coffee and watched the platform.",
    "The museum's new exhibit tells the story of ships that sailed to distant islands.",
)
CODE = (
    "def mean(xs):\n    return sum(xs) / len(xs)",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)",
    "import os\npath = os.path.join(root, 'data', name)",
    "class Stack:\n    def __init__(self):\n        self.items = []",
    "int main(void) { int x = 0; while (x < 5) x++; return x; }",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC;",
    "const add = (a, b) => a + b;\nconsole.log(add(2, 3));",
    "with open('log.txt') as f:\n    lines = [l.strip() for l in f]",
)
NUMBERS = (
    "3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 2 3 8 4",
    "2, 4, 8, 16, 32, 64, 128, 256, 512, 1024",
    "17.5 + 24.25 = 41.75; 41.75 * 2 = 83.5",
    "1999 2003 2011 2017 2020 2024 2031",
    "0.001 0.01 0.1 1 10 100 1000 10000",
    "42 17 86 3 59 71 28 94 65 12 37 80",
    "7 x 8 = 56, 9 x 6 = 54, 12 x 12 = 144",
    "100 - 37 = 63; 63 / 7 = 9; 9 ^ 2 = 81",
)
TEXT_DOMAINS = {"prose": PROSE, "code": CODE, "numbers": NUMBERS}
RANDOM_DOMAIN = "random tokens"
RANDOM_COUNT, RANDOM_LENGTH, RANDOM_SEED = 8, 24, 0
BUILT_IN = tuple(TEXT_DOMAINS) + (RANDOM_DOMAIN,)
RUN_DOMAIN = "your prompts"
"""The default domain of the run's own inputs (the page lets the user label them)."""
MAX_TOKENS = 128
"""Built-in texts are truncated to this many tokens."""
