"""The "Use sample images" control of the new-analysis page (offline scikit-learn images).

Chosen samples are stored as blobs by SHA-256, exactly like uploaded images, and join the page's
``new-images`` list (entries marked ``"sample"`` so that un-choosing one removes it again).
"""

from __future__ import annotations

import hashlib

from dash import Input, Output, State, callback, dcc, html, no_update

from app import state
from app.components import alert
from backend import sample_images


def sample_picker() -> html.Div:
    return html.Div(className="field", style={"marginTop": "0.6rem"}, children=[
        html.Label("…or use sample images (for image models)", htmlFor="new-samples"),
        dcc.Dropdown(id="new-samples", options=sample_images.sample_options(), value=[], multi=True,
                     placeholder="Use sample images: digits (for digits-vit) or photos"),
    ])


@callback(
    Output("new-images", "data", allow_duplicate=True),
    Output("new-upload-status", "children", allow_duplicate=True),
    Input("new-samples", "value"), State("new-images", "data"), prevent_initial_call=True,
)
def on_samples(chosen, images):
    """Store the chosen samples' PNG bytes as blobs and list them with the uploaded images."""
    chosen = list(chosen or [])
    kept = [im for im in images or [] if not im.get("sample")]
    added = []
    try:
        for key in chosen:
            s = sample_images.get_sample(key)
            digest = hashlib.sha256(s.png).hexdigest()
            state.cache().put_blob(digest, s.png, name=f"{key}.png")
            added.append({"name": f"{key}.png", "digest": digest, "sample": key})
    except KeyError as exc:
        return no_update, alert(str(exc.args[0]))
    except state.REDIS_ERRORS:
        return no_update, alert(state.REDIS_DOWN)
    n_up = len(kept)
    text = f"{len(added)} sample image(s) chosen" + (f", {n_up} uploaded image(s)" if n_up else "")
    return kept + added, alert(text, "info")
