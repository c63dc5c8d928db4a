"""One head's query-key map as raw float32 coordinates, for the maps page's head switch in the browser.

``GET /api/runs/<run_id>/embedding.f32?layer=L&head=H&method=umap`` (``method`` may end in ``_raw``, as in
``/api/runs/<id>/embedding``) answers ``application/octet-stream``: the map's ``[n, 2]`` float32 coordinates,
little-endian, row-major (``x0 y0 x1 y1 ...``), in the order of the JSON endpoint's points. Headers:
``X-Atlas-Points`` is the key of the run's point table (its ``meta`` content, :func:`app.maps_data.point_table`):
two heads with the same key have the same points in the same order, so a figure drawn for one head takes the
other's coordinates without its hover texts, colours or trace split changing (``assets/maps_head.js``).

8 bytes a point (160 KB for 20,000 points, vs ~200 KB of base64 figure JSON and 2.8 MB for the JSON points), no
per-request compression: float32 coordinates are mostly mantissa noise (gzip saves ~10 % at a CPU cost per
request). A run's arrays never change (content-addressed run ids), so the answer is cacheable; the ETag is the
point table key plus the head and method.
"""

from __future__ import annotations

import numpy as np
from flask import Response, request

from app import maps_data
from app.api_blueprint import api, error

MAX_AGE_S = 3600


def head_coordinates(run_id: str, layer: object, head: object, method: str) -> tuple[np.ndarray, str]:
    """``(xy [n, 2] float32, point table key)`` of one head; ``method`` may end in ``_raw``."""
    base = method.removesuffix("_raw")
    xy, meta = maps_data.head(run_id, layer, head, base, normalised=not method.endswith("_raw"))
    table = maps_data.point_table(run_id, maps_data.map_run(run_id), meta)
    return xy, table.key


def little_endian_bytes(xy: np.ndarray) -> bytes:
    """``xy`` as contiguous little-endian float32 bytes (what a browser's Float32Array reads)."""
    return np.ascontiguousarray(xy, dtype="<f4").tobytes()


@api.get("/runs/<run_id>/embedding.f32")
def get_embedding_f32(run_id: str):
    for name in ("layer", "head"):
        if name not in request.args:
            return error(f"missing query parameter {name}", 400)
    method = request.args.get("method", "umap")
    xy, key = head_coordinates(run_id, request.args["layer"], request.args["head"], method)
    etag = f"{key}:{int(request.args['layer'])}:{int(request.args['head'])}:{method}"
    resp = Response(little_endian_bytes(xy), mimetype="application/octet-stream")
    resp.headers.update({"X-Atlas-Points": key, "X-Atlas-Count": str(len(xy)),
                         "Cache-Control": f"private, max-age={MAX_AGE_S}",
                         "Access-Control-Expose-Headers": "X-Atlas-Points, X-Atlas-Count"})
    resp.set_etag(etag)
    return resp.make_conditional(request)
