"""The README's images and the numbers its "First run" walk-through quotes.

Every image the README links exists in the repository and is under 300 kB; every number in the walk-through's
captions (image alt texts and the italic caption lines) is a value of a committed results file in
``benchmarks/results/`` written exactly as that file writes it, so a caption cannot drift from the measurement
(the screenshots and their numbers come from ``scripts/readme_screenshots.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
MAX_IMAGE_BYTES = 300_000
SECTION = "## First run"
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
NUMBER = re.compile(r"(?<![\w.,-])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,-])\d+(?:\.\d+)?(?![\w])")
"""A number as prose writes it (``0.82``, ``59.0``, ``2,004``, ``30``), not digits inside a name (``SmolLM2``,
``135M``, ``v2``) or a version."""


def readme() -> str:
    return README.read_text(encoding="utf-8")


def walkthrough(text: str) -> str:
    """The "First run" section: from its heading to the next level-2 heading."""
    start = text.find("\n" + SECTION) + 1  # the heading may go on ("## First run: ...")
    assert start > 0, f"README.md has no '{SECTION}' section"
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def captions(section: str) -> list[str]:
    """Image alt texts and italic caption lines (a whole line between single ``*``) of a README section."""
    alts = [m.group(1) for m in IMAGE.finditer(section)]
    lines = [ln.strip()[1:-1] for ln in section.splitlines()
             if re.fullmatch(r"\*[^*].*[^*]\*", ln.strip())]
    return alts + lines


def quoted_numbers(text: str) -> list[str]:
    return [m.group(0).replace(",", "") for m in NUMBER.finditer(text)]


def result_numbers() -> set[str]:
    """Every number in the committed results files, as Python writes it (``json.dumps``: ``0.82``, ``59.0``)."""
    found: set[str] = set()

    def walk(v) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            found.add(json.dumps(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for path in sorted(RESULTS.glob("*.json")):
        walk(json.loads(path.read_text()))
    return found


def test_every_readme_image_exists_and_is_small() -> None:
    links = [m.group(2) for m in IMAGE.finditer(readme()) if not m.group(2).startswith(("http:", "https:"))]
    assert len(links) >= 5
    for link in links:
        path = ROOT / link
        assert path.is_file(), f"README links {link}, which does not exist"
        assert path.stat().st_size < MAX_IMAGE_BYTES, f"{link} is {path.stat().st_size} bytes (limit 300 kB)"


def test_walkthrough_images_are_the_screenshots_script_output() -> None:
    section = walkthrough(readme())
    shots = json.loads((RESULTS / "screenshots_smollm2.json").read_text())
    links = {m.group(2) for m in IMAGE.finditer(section)}
    assert set(shots["images"].values()) <= links, "a screenshot of scripts/readme_screenshots.py is not shown"


def missing_numbers(section: str, known: set[str]) -> list[str]:
    """Numbers quoted in the section's captions that no results file holds."""
    quoted = [n for c in captions(section) for n in quoted_numbers(c)]
    return sorted({n for n in quoted if n not in known}, key=float)


def test_walkthrough_captions_quote_the_results_files() -> None:
    section = walkthrough(readme())
    caps = captions(section)
    assert len(caps) >= 6, "the walk-through lost its captions"
    assert sum(len(quoted_numbers(c)) for c in caps) >= 10
    missing = missing_numbers(section, result_numbers())
    assert not missing, f"numbers in the walk-through captions that no results file holds: {missing}"


@pytest.mark.parametrize("text, numbers", [
    ("sink rate 0.82 at eps 0.3 over 4 prompts", ["0.82", "0.3", "4"]),
    ("SmolLM2-135M, 2,004 tokens, W = 32", ["2004", "32"]),
    ("layer 18, head 6 (0.86); perplexity 59.0 vs 233.4", ["18", "6", "0.86", "59.0", "233.4"]),
])
def test_number_extraction(text: str, numbers: list[str]) -> None:
    assert quoted_numbers(text) == numbers


def test_a_drifted_caption_is_caught() -> None:
    """The check can fail: a caption whose number drifted from the results file is reported."""
    shots = json.loads((RESULTS / "screenshots_smollm2.json").read_text())
    known = result_numbers()
    rate = json.dumps(shots["sinks"]["sink_rate"])
    good = f"{SECTION}\n\n![Sink rate {rate}](assets/x.png)\n\n*Sink rate {rate} at eps 0.3.*\n"
    assert missing_numbers(good, known) == []
    drifted = good.replace(f"*Sink rate {rate}", "*Sink rate 123456.7")
    assert missing_numbers(drifted, known) == ["123456.7"]
