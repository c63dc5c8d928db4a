"""The small plotly.js bundle (scripts/plotly_bundle) registers every trace type the app draws, and is built from
the plotly.js release that the Python plotly package writes its figures for."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app import preload

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "scripts" / "plotly_bundle"


def _drawn_trace_types() -> set[str]:
    """Trace types constructed anywhere in the app's Python code (``go.Heatmap(`` -> ``heatmap``)."""
    types = set()
    for path in [*(ROOT / "backend").rglob("*.py"), *(ROOT / "app").rglob("*.py")]:
        for name in re.findall(r"\bgo\.([A-Z][A-Za-z0-9]*)\(", path.read_text(encoding="utf-8")):
            if name not in {"Figure", "FigureWidget"}:
                types.add(name.lower())
    return types


def _registered_trace_types() -> set[str]:
    entry = (BUNDLE / "entry.js").read_text(encoding="utf-8")
    return {"scatter"} | set(re.findall(r"require\('plotly\.js/lib/([a-z0-9]+)'\)", entry)) - {"core"}


def test_every_drawn_trace_type_is_in_the_bundle() -> None:
    drawn = _drawn_trace_types()
    assert {"heatmap", "scatter", "scattergl", "bar", "image"} <= drawn  # the scan finds what the figures use
    missing = drawn - _registered_trace_types()
    assert not missing, f"add {sorted(missing)} to scripts/plotly_bundle/entry.js"


def test_bundle_is_the_plotly_js_release_of_the_python_package() -> None:
    from plotly.offline import get_plotlyjs_version

    want = get_plotlyjs_version()
    assert json.loads((BUNDLE / "package.json").read_text())["dependencies"]["plotly.js"] == want
    lock = json.loads((BUNDLE / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/plotly.js"]["version"] == want


def test_full_plotly_is_preloaded_only_without_the_bundle(tmp_path: Path) -> None:
    assert preload.FULL_PLOTLY in preload.preloaded(tmp_path)
    (tmp_path / preload.SMALL_PLOTLY).parent.mkdir(parents=True)
    (tmp_path / preload.SMALL_PLOTLY).write_text("window.Plotly = {};")
    assert preload.FULL_PLOTLY not in preload.preloaded(tmp_path)
    assert set(preload.preloaded(tmp_path)) == set(preload.PRELOADED) - {preload.FULL_PLOTLY}
