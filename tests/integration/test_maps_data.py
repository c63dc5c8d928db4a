"""The maps pages' data layer on a real Redis: a run stored as the worker stores maps, read back one head at a
time and as the matrix, clicks mapped to tokens, the CSV, and an evicted head (the run is queued again)."""

from __future__ import annotations

import csv
import io
import uuid

import numpy as np
import pytest

from backend import embedding_points, keys, names

pytestmark = pytest.mark.integration

TOKENS = [["[CLS]", "the", "cat", "sat", "[SEP]"], ["[CLS]", "a", "<b>dog</b>", "[SEP]"]]
L, H = 2, 3


@pytest.fixture()
def stored_run(cache):
    """A finished text run with UMAP maps (normalised and raw) for every head; returns (run id, arrays)."""
    meta = np.array([[k, p, pos] for k in (0, 1) for p, t in enumerate(TOKENS) for pos in range(len(t))], np.int32)
    rng = np.random.default_rng(0)
    arrays = {}
    for l in range(L):
        for h in range(H):
            for method in ("umap", "umap_raw"):
                arrays[names.embedding(l, h, method)] = rng.normal(size=(len(meta), 2)).astype(np.float32)
            arrays[names.embedding_meta(l, h)] = meta
    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"inputs": [" ".join(t) for t in TOKENS], "options": {}}, {"ref": "test"}, "test")
    sizes = cache.put_arrays(run_id, list(arrays.items()))
    cache.update(run_id, status="done", progress=1.0, info={"n_layers": L, "n_heads": H, "tokens": TOKENS,
                                                            "kind": "text"}, sizes=sizes)
    yield run_id, arrays
    cache.delete_arrays(run_id)


def test_head_matrix_points_and_csv(stored_run) -> None:
    from app import maps_data, state

    run_id, arrays = stored_run
    run = maps_data.map_run(run_id)
    assert (run.n_layers, run.n_heads, run.methods, run.image) == (L, H, ("umap",), False)
    xy, meta = maps_data.head(run_id, 1, 2, "umap")
    assert np.array_equal(xy, arrays[names.embedding(1, 2, "umap")])
    raw, _ = maps_data.head(run_id, 1, 2, "umap", normalised=False)
    assert np.array_equal(raw, arrays[names.embedding(1, 2, "umap_raw")])

    thumbs = maps_data.matrix(run_id, "umap")
    assert sorted(thumbs) == [(l, h) for l in range(L) for h in range(H)]
    for (l, h), th in thumbs.items():
        full = arrays[names.embedding(l, h, "umap")]
        assert np.allclose(th.xy, embedding_points.fit_cell(full)[th.index])

    # a click at a point's coordinates selects that token
    i = 7
    assert maps_data.selected_point(run_id, 1, 2, "umap", True, *xy[i]) == meta[i].tolist()

    pts = maps_data.points(run_id, 0, 1, "umap_raw")
    assert len(pts) == len(meta) and pts[i]["token"] == TOKENS[meta[i, 1]][meta[i, 2]]
    assert pts[i]["x"] == pytest.approx(float(arrays[names.embedding(0, 1, "umap_raw")][i, 0]))
    rows = list(csv.DictReader(io.StringIO(maps_data.csv_text(run_id, 0, 1, "umap", True))))
    assert len(rows) == len(meta) and rows[2]["token"] == "cat" and rows[-1]["kind"] == "key"

    table = maps_data.point_table(run_id, run, meta)
    assert "[cat]" in table.hover[2] and table.hover[2].startswith("<b>query</b>")

    for bad in (dict(layer=2, head_=0, method="umap"), dict(layer=0, head_=0, method="tsne"),
                dict(layer=0, head_="x", method="umap")):
        with pytest.raises(state.ViewError):
            maps_data.head(run_id, **bad)


def test_evicted_head_is_recomputed(stored_run, cache) -> None:
    from app import maps_data, state

    run_id, _ = stored_run
    maps_data._HEADS.clear()
    cache.r.delete(keys.run_tensor(cache.prefix, run_id, names.embedding(0, 2, "umap")))
    assert cache.get_array(run_id, names.embedding(0, 2, "umap")) is None
    with pytest.raises(state.NotReady, match="recomputing"):
        maps_data.head(run_id, 0, 2, "umap")
    assert cache.manifest(run_id)["status"] == "queued"


def test_run_without_maps_is_refused(cache) -> None:
    from app import maps_data, state

    run_id = uuid.uuid4().hex
    cache.create_run(run_id, {"inputs": ["x"], "options": {}}, {"ref": "test"}, "test")
    cache.update(run_id, status="done", info={"n_layers": 1, "n_heads": 1, "tokens": [["x"]]}, sizes={})
    with pytest.raises(state.ViewError, match="no query-key maps"):
        maps_data.map_run(run_id)


def test_binary_coordinates_equal_the_json_points(stored_run) -> None:
    """``embedding.f32`` (the maps page's head switch) holds the JSON endpoint's coordinates, as float32 in the
    same order, with the key of the point table the page's figure indexes; bad parameters get the JSON errors."""
    from app import maps_data
    from app.main import create_app

    run_id, arrays = stored_run
    client = create_app().server.test_client()
    keys_seen = set()
    for layer, head, method in ((0, 0, "umap"), (1, 2, "umap"), (1, 2, "umap_raw")):
        q = f"layer={layer}&head={head}&method={method}"
        resp = client.get(f"/api/runs/{run_id}/embedding.f32?{q}")
        assert resp.status_code == 200 and resp.mimetype == "application/octet-stream"
        xy = np.frombuffer(resp.data, dtype="<f4").reshape(-1, 2)
        points = client.get(f"/api/runs/{run_id}/embedding?{q}").get_json()["points"]
        assert len(xy) == len(points) == int(resp.headers["X-Atlas-Count"])
        assert np.array_equal(xy, np.array([[p["x"], p["y"]] for p in points], dtype=np.float32))
        assert np.array_equal(xy, arrays[names.embedding(layer, head, method)])
        keys_seen.add(resp.headers["X-Atlas-Points"])
        again = client.get(f"/api/runs/{run_id}/embedding.f32?{q}", headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304 and again.data == b""
    _, meta = maps_data.head(run_id, 0, 0, "umap")
    assert keys_seen == {maps_data.point_table(run_id, maps_data.map_run(run_id), meta).key}  # one table, all heads

    for q, code, words in (("layer=0", 400, "missing query parameter head"), ("layer=9&head=0", 400, "layer must"),
                           ("layer=0&head=0&method=tsne", 400, "no tsne map")):
        resp = client.get(f"/api/runs/{run_id}/embedding.f32?{q}")
        assert resp.status_code == code and words in resp.get_json()["error"], resp.get_json()
    assert client.get(f"/api/runs/{'0' * 32}/embedding.f32?layer=0&head=0").status_code == 404


def test_raw_maps_missing_are_offered_on_request(cache, stored_run) -> None:
    """A run without the maps without normalisation (computed on request): the data layer says so with its own
    error (the page offers to extend the run), the maps page waits for "embedding_raw"; once the run has them
    (extended), they are read like any map. A run that stored them (stored_run) needs nothing."""
    from app import maps_data

    run_id, arrays = stored_run
    assert maps_data.gate_analysis(run_id, False) == "embedding"
    bare = uuid.uuid4().hex
    normalised = {k: v for k, v in arrays.items() if not k.endswith("_raw")}
    cache.create_run(bare, {"inputs": [" ".join(t) for t in TOKENS], "options": {"analyses": ["attention", "embedding"]}},
                     {"ref": "test"}, "test")
    sizes = cache.put_arrays(bare, list(normalised.items()))
    cache.update(bare, status="done", progress=1.0, info={"n_layers": L, "n_heads": H, "tokens": TOKENS,
                                                          "kind": "text"}, sizes=sizes)
    try:
        assert np.array_equal(maps_data.head(bare, 1, 2, "umap")[0], arrays[names.embedding(1, 2, "umap")])
        for read in (lambda: maps_data.head(bare, 1, 2, "umap", normalised=False),
                     lambda: maps_data.matrix(bare, "umap", normalised=False)):
            with pytest.raises(maps_data.RawMapsMissing, match="computed on request.*embedding_raw"):
                read()
        assert maps_data.gate_analysis(bare, True) == "embedding"
        assert maps_data.gate_analysis(bare, False) == "embedding_raw"
        raw = {k: v for k, v in arrays.items() if k.endswith("_raw")}
        sizes = {**sizes, **cache.put_arrays(bare, list(raw.items()))}
        cache.update(bare, sizes=sizes, extra_analyses=["embedding_raw"])
        assert maps_data.gate_analysis(bare, False) == "embedding"
        assert np.array_equal(maps_data.head(bare, 1, 2, "umap", normalised=False)[0],
                              arrays[names.embedding(1, 2, "umap_raw")])
    finally:
        cache.delete_arrays(bare)
