"""docs/REFERENCES.md is in the repository, names the released code each default follows and every variant's
label, and the app serves it at the address the top bar links to."""

from __future__ import annotations

from app.main import REFERENCES, REFERENCES_URL, create_app, root_layout
from backend import metrics, roles, vit
from backend.spec import IMPORTANCE_RULES, RETRIEVAL_TESTS


def test_references_name_the_released_code_and_every_variant() -> None:
    text = REFERENCES.read_text(encoding="utf-8")
    for released in ("eval_sink_open_source.py", "vit_rollout.py", "classifier_eval.py", "prune.py",
                     "retrieval_head_detection.py"):
        assert released in text, released
    for label in (*metrics.SINK_RULES, *vit.DISCARD_RULES, *IMPORTANCE_RULES, *RETRIEVAL_TESTS):
        assert f"`{label}`" in text, label
    for section in range(1, 6):
        assert f"\n## {section}. " in text
    assert roles.RETRIEVAL_ANSWER in text


def test_app_serves_the_references_and_links_them() -> None:
    client = create_app().server.test_client()
    resp = client.get(REFERENCES_URL)
    assert resp.status_code == 200 and resp.mimetype == "text/markdown"
    assert resp.get_data(as_text=True) == REFERENCES.read_text(encoding="utf-8")
    found = []

    def walk(c) -> None:
        if getattr(c, "id", None) == "nav-definitions":
            found.append(c)
        kids = getattr(c, "children", None)
        for k in kids if isinstance(kids, (list, tuple)) else [kids]:
            if hasattr(k, "to_plotly_json"):
                walk(k)

    walk(root_layout())
    assert len(found) == 1 and found[0].href == REFERENCES_URL
