"""New analysis: the upload-your-own-prompt panel (paste prompts, upload files, pick a model)."""

from __future__ import annotations

import base64
import hashlib

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app import state
from app.components import alert, help_text
from app.examples import EXAMPLES as ONE_CLICK_EXAMPLES, submit_example
from app.sample_picker import sample_picker
from backend import jobs
from backend.model_refs import DEFAULT_MODEL, ModelError, available_models, default_causal_model, missing_models
from backend.spec import DEFAULT_OPTIONS, MAP_POINTS_RANGE, SpecError
from backend.uploads import IMAGE_EXTENSIONS, UploadError, check_image, parse_labels, parse_upload
from backend.vocab import ANALYSES, IMPORTANCE_RULES, PROJECTION_METHODS, RETRIEVAL_TESTS

dash.register_page(__name__, path="/", title="New analysis · Attention Atlas", name="New analysis")

EXAMPLES = "The cat sat on the mat because it was tired.\nParis is the capital of France.\nThe keys to the cabinet are on the table."
ANALYSIS_OPTIONS = [
    {"label": a.label, "value": a.name, **({"disabled": True} if a.name == "attention" else {})} for a in ANALYSES
]


def limits_text() -> str:
    s = state.settings()
    return (
        f"Limits: up to {s.max_prompts} prompts, {s.max_prompt_chars:,} characters each; prompts longer than "
        f"{s.max_tokens} tokens (or the model's limit) are {'truncated with a notice' if s.truncate_long_prompts else 'refused'}; "
        f"uploads up to {s.max_upload_bytes // 1024:,} KB (.txt one prompt per line, .csv with a 'prompt' column, "
        ".jsonl with a \"prompt\" field; PNG/JPEG for image models)."
    )


MODEL_ABOUT = {
    "smollm2-135m": "SmolLM2-135M-Instruct: a real causal LM (Llama architecture, 30 layers x 9 query / 3 key-value "
                    "heads, context 8,192), de-quantized from a 4-bit GGUF: numbers are close to, not equal to, the "
                    "original checkpoint's. Shows sinks, massive activations, induction heads, StreamingLLM.",
    DEFAULT_MODEL: "all-MiniLM-L6-v2: a real sentence encoder (BERT, 6 layers x 12 heads); its sink is [CLS].",
    "tiny-pydoc-lm": "tiny-pydoc-lm: a toy causal LM trained here on Python's help texts (fast test model; no sinks, "
                     "no induction heads).",
    "digits-vit": "digits-vit: a small ViT trained here on 8x8 digits (images: upload PNG/JPEG or use the samples).",
}


def model_about(model: str | None) -> str:
    """One line on what the chosen model is (unknown folders and hub ids get a generic line)."""
    return MODEL_ABOUT.get(model or "", f"{model}: a model from a local folder or the HuggingFace cache.")


def missing_models_notice() -> html.Div | None:
    """Says which offline models are missing, why, and the command that fetches them."""
    missing = missing_models()
    if not missing:
        return None
    return alert(" ".join(missing.values()), "warn")


DEFAULT_ANALYSES = list(DEFAULT_OPTIONS["analyses"])
"""Ticked by default: the analyses that take seconds on any model (the token view and the sinks page). Head roles
(minutes on SmolLM2 on two cores), maps (UMAP per head) and importance (a backward pass per batch) are offered
on their views of a finished run (the run is extended, same id), so nothing is a dead end."""


def intro() -> html.Div:
    """What the app does in two lines, and the one-click examples."""
    return html.Div(className="card", id="intro", children=[
        html.H2("Attention Atlas"),
        html.P("Look inside transformer attention: run a model on your prompts or images, then explore where each "
               "token attends, attention sinks, query-key maps, head roles and head importance.", className="lead"),
        html.P("Every view is a shareable URL; runs are cached, so an example opens at once after its first run.",
               className="lead"),
        html.Div(className="examples", children=[
            html.Button(ex.title, id={"type": "new-example", "key": ex.key}, className="btn secondary",
                        title=ex.blurb, n_clicks=0) for ex in ONE_CLICK_EXAMPLES
        ]),
        html.Div(id="new-example-message"),
    ])


def model_options(models: list[str]) -> list[dict[str, str]]:
    """Dropdown entries; every listed model runs offline (registry models, the bundled encoder, local folders)."""
    return [{"label": f"{m} (offline)", "value": m} for m in models]


def layout(**_query: str) -> html.Div:
    s = state.settings()
    models = available_models(s)
    roots = ", ".join(str(r) for r in s.model_roots)
    return html.Div([
        intro(),
        html.H2("New analysis"),
        html.Div(className="card", children=[
            html.Div(className="row", children=[
                html.Div(className="field", style={"minWidth": "280px"}, children=[
                    html.Label("Model", htmlFor="new-model"),
                    dcc.Dropdown(id="new-model", options=model_options(models),
                                 value=default_causal_model(s), clearable=False),
                ]),
                html.Div(className="field", style={"flex": "1"}, children=[
                    html.Label(["…or a local model folder (or a hub id when online) ", help_text(
                        f"Every model in the list is available offline. To add your own, put a HuggingFace model "
                        f"folder (config.json, weights, tokenizer) under one of the model roots ({roots}; "
                        "ATLAS_MODEL_ROOTS) and it joins the list, or type its path here. Hub ids need a network "
                        "connection and ATLAS_ALLOW_HUB=1.")], htmlFor="new-model-custom"),
                    dcc.Input(id="new-model-custom", type="text",
                              placeholder=f"a folder under {s.model_roots[0] if s.model_roots else 'the model roots'}",
                              debounce=True, style={"width": "100%"}),
                ]),
            ]),
            html.P(model_about(default_causal_model(s)), id="new-model-about", className="limits"),
            html.Div(id="new-missing-models", children=missing_models_notice()),
            html.Label("Prompts, one per line", htmlFor="new-prompts", style={"marginTop": "0.8rem", "display": "block"}),
            dcc.Textarea(id="new-prompts", className="prompts", value=EXAMPLES),
            dcc.Upload(id="new-upload", className="upload", multiple=True,
                       children=html.Div(["Drop or ", html.A("choose files"), " (.txt, .csv, .jsonl, .png, .jpg)"])),
            html.Div(id="new-upload-status"),
            sample_picker(),
            dcc.Store(id="new-images", data=[]),
            dcc.Store(id="new-labels"),  # {"text", "labels"} from CSV 'label' columns, used while the text is unchanged
            html.Div(className="row", style={"marginTop": "0.8rem"}, children=[
                dcc.Checklist(id="new-analyses", options=ANALYSIS_OPTIONS, value=DEFAULT_ANALYSES,
                              inline=True, inputStyle={"marginRight": "4px", "marginLeft": "12px"}),
            ]),
            html.Div(className="row", children=[
                html.Div(className="field", children=[
                    html.Label(["Map projections ", help_text(
                        "Projections computed for the query-key maps (when that analysis is ticked). UMAP is the "
                        "default; t-SNE takes about ten times longer; PCA is instant.")]),
                    dcc.Checklist(id="new-map-methods", value=list(DEFAULT_OPTIONS["embedding_methods"]), inline=True,
                                  options=[{"label": m.label, "value": m.name} for m in PROJECTION_METHODS],
                                  inputStyle={"marginRight": "4px", "marginLeft": "8px"}),
                ]),
                html.Div(className="field", children=[
                    html.Label(["Map points per head ", help_text(
                        "Queries + keys per head, sampled evenly across prompts (the same tokens for every head). "
                        f"Between {MAP_POINTS_RANGE[0]:,} and {MAP_POINTS_RANGE[1]:,}.")]),
                    dcc.Input(id="new-map-points", type="number", value=DEFAULT_OPTIONS["max_points_per_head"],
                              min=MAP_POINTS_RANGE[0], max=MAP_POINTS_RANGE[1], step=100),
                ]),
            ]),
            html.Details(id="new-defs", children=[
                html.Summary(["Definitions: head importance and retrieval heads ", help_text(
                    "Defaults follow each paper's released code; the variants are the earlier Attention Atlas "
                    "rules. Definitions and sources: docs/REFERENCES.md.")]),
                html.Div(className="row", children=[
                    html.Div(className="field", children=[
                        html.Label("Head importance |dL/dξ| taken"),
                        dcc.RadioItems(id="new-importance-rule", value=DEFAULT_OPTIONS["importance_rule"], options=[
                            {"label": f" {r.label}", "value": r.name} for r in IMPORTANCE_RULES]),
                    ]),
                    html.Div(className="field", children=[
                        html.Label("Retrieval-head test (causal LMs)"),
                        dcc.RadioItems(id="new-retrieval-test", value=DEFAULT_OPTIONS["retrieval_test"], options=[
                            {"label": f" {r.label}", "value": r.name} for r in RETRIEVAL_TESTS]),
                    ]),
                ]),
                html.P("Needle-in-a-haystack texts (empty: the released detector's needle and question, and a "
                       "built-in haystack). The answer is what the model must reproduce; it must be part of the "
                       "needle (empty: the whole needle).", className="muted"),
                html.Div(className="row", children=[
                    html.Div(className="field", style={"flex": "1"}, children=[
                        html.Label("Needle"), dcc.Textarea(id="new-needle", style={"width": "100%", "height": "3em"})]),
                    html.Div(className="field", style={"flex": "1"}, children=[
                        html.Label("Question"), dcc.Textarea(id="new-question", style={"width": "100%", "height": "3em"})]),
                    html.Div(className="field", style={"flex": "1"}, children=[
                        html.Label("Answer"), dcc.Textarea(id="new-answer", style={"width": "100%", "height": "3em"})]),
                ]),
                html.Div(className="field", children=[
                    html.Label("Haystack"), dcc.Textarea(id="new-haystack", style={"width": "100%", "height": "5em"})]),
            ]),
            html.P("Analyses left unticked can be added later: each view of a run offers to compute what it needs.",
                   className="limits"),
            html.P(limits_text(), className="limits", id="new-limits"),
            html.Button("Analyse", id="new-submit", className="btn", n_clicks=0),
            dcc.Loading(html.Div(id="new-message"), type="dot"),
            dcc.Location(id="new-redirect", refresh="callback-nav"),
        ]),
    ])


@callback(Output("new-model-about", "children"), Input("new-model", "value"), prevent_initial_call=True)
def on_model(model: str | None) -> str:
    return model_about(model)


@callback(
    Output("new-prompts", "value"), Output("new-images", "data"), Output("new-upload-status", "children"),
    Output("new-labels", "data"), Input("new-upload", "contents"), State("new-upload", "filename"), State("new-prompts", "value"),
    State("new-images", "data"), State("new-model", "value"), State("new-model-custom", "value"), prevent_initial_call=True,
)
def on_upload(contents, filenames, current, images, model=None, custom=None):
    """Text files fill the prompt box; images are stored (by digest) for an image model."""
    if not contents:
        return no_update, no_update, no_update, no_update
    s = state.settings()
    prompts: list[str] = []
    labels: list[int] | None = []
    images = list(images or [])
    notes = []
    try:
        for content, name in zip(contents, filenames):
            data = base64.b64decode(content.split(",", 1)[1])
            if name.lower().endswith(IMAGE_EXTENSIONS):
                check_image(name, data, s)
                digest = hashlib.sha256(data).hexdigest()
                state.cache().put_blob(digest, data, name=name)
                images.append({"name": name, "digest": digest})
                notes.append(f"{name}: image stored")
            else:
                got = parse_upload(name, data, s)
                got_labels = parse_labels(name, data, s)
                prompts.extend(got)
                labels = labels + got_labels if labels is not None and got_labels is not None else None
                notes.append(f"{name}: {len(got)} prompt(s)" + (" with labels" if got_labels is not None else ""))
    except UploadError as exc:
        return no_update, no_update, alert(str(exc)), no_update
    except state.REDIS_ERRORS:
        return no_update, no_update, alert(state.REDIS_DOWN), no_update
    if any(n.endswith("image stored") for n in notes) and _model_kind(model, custom) == "text":
        notes.append(f"note: {(custom or '').strip() or model} is a text model and ignores images; choose an image "
                     "model (digits-vit) to analyse them")
    text = "\n".join(prompts) if prompts else current
    kept = {"text": text, "labels": labels} if prompts and labels else None
    kind = "warn" if any(n.startswith("note:") for n in notes) else "info"
    return text, images, alert("; ".join(notes), kind, alert_id="new-upload-alert"), kept


def _model_kind(model: str | None, custom: str | None) -> str | None:
    """The chosen model's input kind, or None when it cannot be resolved."""
    from backend.model_refs import resolve_model

    try:
        return resolve_model((custom or "").strip() or model or DEFAULT_MODEL, state.settings()).kind
    except (ModelError, OSError, ValueError):
        return None


@callback(
    Output("new-example-message", "children"), Output("new-redirect", "href", allow_duplicate=True),
    Input({"type": "new-example", "key": ALL}, "n_clicks"), prevent_initial_call=True,
)
def on_example(clicks):
    """Open an example's run: submitted on the first click, a cache hit afterwards."""
    if not ctx.triggered_id or not any(clicks or []):
        return no_update, no_update
    try:
        _run_id, path = submit_example(state.cache(), state.settings(), ctx.triggered_id["key"])
    except (SpecError, ModelError, jobs.RateLimited) as exc:
        return alert(f"This example cannot run here: {exc}"), no_update
    except state.REDIS_ERRORS:
        return alert(state.REDIS_DOWN), no_update
    return alert("Opening the example's run…", "info"), path


@callback(
    Output("new-message", "children"), Output("new-redirect", "href"),
    Input("new-submit", "n_clicks"),
    State("new-model", "value"), State("new-model-custom", "value"), State("new-prompts", "value"),
    State("new-images", "data"), State("new-analyses", "value"), State("new-labels", "data"),
    State("new-map-methods", "value"), State("new-map-points", "value"),
    State("new-importance-rule", "value"), State("new-retrieval-test", "value"), State("new-needle", "value"),
    State("new-question", "value"), State("new-answer", "value"), State("new-haystack", "value"),
    prevent_initial_call=True,
)
def on_submit(_n, model, custom, text, images, analyses, labels=None, map_methods=None, map_points=None,
              importance_rule=None, retrieval_test=None, needle=None, question=None, answer=None, haystack=None):
    model = (custom or "").strip() or model or DEFAULT_MODEL
    s = state.settings()
    try:
        from backend.model_refs import resolve_model

        kind = resolve_model(model, s).kind
        if kind == "image":
            inputs = [im["digest"] for im in images or []]
            if not inputs:
                raise SpecError("this is an image model: upload at least one PNG or JPEG image")
        else:
            inputs = (text or "").splitlines()
        options = {"analyses": list(analyses or [])}
        if "embedding" in options["analyses"]:
            if map_points is None:
                raise SpecError(f"map points per head must be a whole number between {MAP_POINTS_RANGE[0]:,} "
                                f"and {MAP_POINTS_RANGE[1]:,}")
            options["embedding_methods"] = list(map_methods or [])
            options["max_points_per_head"] = int(map_points) if float(map_points).is_integer() else map_points
        if labels and kind == "text" and labels.get("text") == text and len(labels["labels"]) == len(
            [p for p in inputs if p.strip()]
        ):  # the CSV's labels, while the text is as uploaded
            options["labels"] = labels["labels"]
        if importance_rule and importance_rule != DEFAULT_OPTIONS["importance_rule"]:
            options["importance_rule"] = importance_rule
        if retrieval_test and retrieval_test != DEFAULT_OPTIONS["retrieval_test"]:
            options["retrieval_test"] = retrieval_test
        for key, value in (("retrieval_needle", needle), ("retrieval_question", question),
                           ("retrieval_answer", answer), ("retrieval_haystack", haystack)):
            if value and value.strip():
                options[key] = value
        run_id, _ = jobs.submit(state.cache(), s, model, inputs, options, kind=kind, client="browser")
    except (SpecError, ModelError, jobs.RateLimited) as exc:
        return alert(str(exc)), no_update
    except state.REDIS_ERRORS:
        return alert(state.REDIS_DOWN), no_update
    return alert("Submitted; opening the run…", "info"), f"/runs/{run_id}"
