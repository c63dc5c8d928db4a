"""The README's "First run" walk-through on SmolLM2-135M: runs, screenshots and the numbers they show.

    .venv/bin/python scripts/readme_screenshots.py          # 30-60 min on 2 shared CPU cores the first time
    .venv/bin/python scripts/readme_screenshots.py --without-importance   # skips run C, the slowest
    REDIS_URL=... ATLAS_KEY_PREFIX=... .venv/bin/python scripts/readme_screenshots.py --app http://127.0.0.1:8050

It does what a new user does, through the app itself: starts a private Redis (data kept in
``.atlas/readme-screenshots``, so a second call finds the runs finished and only re-takes the screenshots), the
web server and one worker (``attention-atlas serve``, as ``scripts/serve.sh``), submits two runs of
``smollm2-135m`` through the JSON API and opens each view in headless Chromium (Playwright, ``/usr/bin/chromium``):

* run A: prose, code and one repeated passage (:data:`PROMPTS`) with sink metrics and head roles: the sinks page
  and the head atlas coloured by induction score;
* run C: a prose passage and the repeated passage of run A (:data:`CURVE_PROMPTS`) with head importance: the
  importance grid, its pruning curves, and live pruning of run A's five strongest induction heads (plus five
  seeded random heads as a control, via the API);
* run B: 2,004 tokens of real prose (the paragraphs of Python's language reference, ``backend.corpora``) with the
  StreamingLLM experiment (window W = 32, 4 sink tokens: the engine's defaults for a long prompt).

Three runs, not one: the StreamingLLM experiment runs on a run's first prompt, and a 2,000-token first prompt would
make every other analysis run on it too; the pruning curves cost about 90 passes of their data set, so run C keeps
it to two passages (on the shared 2-core machine, loaded by other work, the curves over all four prompts were
advancing at one step in 4 minutes: over an hour).

It writes PNGs (< 300 kB each; cropped to the figure) to ``assets/`` and the numbers they show to
``benchmarks/results/screenshots_smollm2.json``; the README's captions quote that file
(``tests/unit/test_readme.py`` checks that every number in them is there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.examples import CODE  # noqa: E402
from backend import corpora  # noqa: E402
from backend.vocab import SINK_EPS as EPS  # noqa: E402

MODEL = "smollm2-135m"
OUT_JSON = REPO / "benchmarks" / "results" / "screenshots_smollm2.json"
ASSETS = REPO / "assets"
DATA_DIR = REPO / ".atlas" / "readme-screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MAX_PNG_BYTES = 300_000
PRUNE_FRACTION = 0.3
N_OFF = 5

REPEATED = " ".join(corpora.PROSE[6:8])
PROMPTS = [" ".join(corpora.PROSE[:3]), " ".join(corpora.PROSE[3:6]), CODE, f"{REPEATED} {REPEATED}"]
"""Run A: two prose passages, two Python functions, and a passage said twice (where induction heads copy)."""
PROMPT_KINDS = ["prose", "prose", "code", "repeated prose"]
RUN_A, RUN_B, RUN_C = ["metrics", "roles"], ["streaming"], ["importance"]
CURVE_PROMPTS = [PROMPTS[0], PROMPTS[3]]
CURVE_KINDS = [PROMPT_KINDS[0], PROMPT_KINDS[3]]
"""Run C (pruning curves, live pruning): a prose passage and the repeated passage."""
LONG_TOKENS = 2048
"""Run B's text: consecutive prose paragraphs, as many as fit in the run limit of 2,048 tokens."""


def long_text() -> str:
    """Consecutive ``pydoc_data`` prose paragraphs, as many as keep the text within :data:`LONG_TOKENS` tokens."""
    from tokenizers import Tokenizer  # noqa: PLC0415  (the fast tokenizer alone: this process needs no torch)

    from backend.offline_models import model_cache_dir  # noqa: PLC0415

    tk = Tokenizer.from_file(str(model_cache_dir() / MODEL / "tokenizer.json"))
    text = ""
    for para in corpora.prose_paragraphs():
        longer = f"{text}\n\n{para}" if text else para
        if len(tk.encode(longer).ids) > LONG_TOKENS:
            break
        text = longer
    return text


# --- the app -----------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(base: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, dict]:
    """GET (or POST ``body`` as JSON) and return (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def start_app(port: int) -> tuple[Any, subprocess.Popen, str]:
    """A private Redis in :data:`DATA_DIR` and ``attention-atlas serve`` (web + one worker) on ``port``."""
    from backend.embedded_redis import EmbeddedRedis  # noqa: PLC0415

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    redis_server = EmbeddedRedis(workdir=DATA_DIR / "redis", persist=True)
    env = {**os.environ, "REDIS_URL": redis_server.url, "ATLAS_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "ATLAS_KEY_PREFIX": "readme", "ATLAS_QUEUE": "readme",
           "ATLAS_PRELOAD": "0", "PYTHONPATH": str(REPO)}
    log = open(DATA_DIR / "serve.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "attention_atlas.cli", "serve", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited; see {DATA_DIR / 'serve.log'}")
        try:
            urllib.request.urlopen(base + "/api/runs", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    os.environ.update(REDIS_URL=redis_server.url, ATLAS_KEY_PREFIX="readme", ATLAS_QUEUE="readme")
    return redis_server, proc, base


def submit(base: str, prompts: list[str], analyses: list[str]) -> str:
    code, out = call(base, "/api/runs", {"model": MODEL, "prompts": prompts, "options": {"analyses": analyses}})
    if code not in (200, 202):
        raise RuntimeError(f"submit failed ({code}): {out}")
    return out["run_id"]


def wait_run(base: str, run_id: str, timeout: float = 3600) -> dict:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        _, body = call(base, f"/api/runs/{run_id}")
        if body.get("status") in ("done", "failed"):
            if body["status"] == "failed":
                raise RuntimeError(f"run {run_id} failed: {body.get('error')}")
            return body
        now = (body.get("status"), body.get("stage"))
        if now != last:
            print(f"  {run_id[:8]}: {now[0]} {now[1] or ''} {100 * (body.get('progress') or 0):.0f} %", flush=True)
            last = now
        time.sleep(2)
    raise TimeoutError(f"run {run_id} did not finish in {timeout} s")


def prune(base: str, run_id: str, heads: list[list[int]], prompt: int) -> dict:
    code, out = call(base, f"/api/runs/{run_id}/prune", {"heads": heads, "prompt": prompt})
    while code == 202:
        time.sleep(1)
        code, out = call(base, f"/api/runs/{run_id}/prune/{out['job']}")
    if code != 200 or out.get("status") != "done":
        raise RuntimeError(f"pruning failed ({code}): {out}")
    return out


# --- numbers -----------------------------------------------------------------------------------------------------

def arrays(run_id: str, keys: list[str]) -> dict[str, Any]:
    """Arrays of a finished run straight from the cache (what the pages load)."""
    from backend.cache import Cache  # noqa: PLC0415
    from backend.redis_conn import connect  # noqa: PLC0415
    from backend.settings import get_settings  # noqa: PLC0415

    s = get_settings()
    cache = Cache(connect(s), s)
    return dict(zip(keys, cache.get_arrays(run_id, keys)))


def numbers(base: str, run_a: str, run_b: str, run_c: str | None) -> dict[str, Any]:
    """The numbers the screenshots show (``run_c`` None: without the importance views)."""
    import numpy as np  # noqa: PLC0415

    out: dict[str, Any] = {}
    _, met = call(base, f"/api/runs/{run_a}/metrics?eps={EPS}&sink_rule=per_prompt")
    n_layers, n_heads = met["n_layers"], met["n_heads"]
    out["sinks"] = {"eps": EPS, "rule": met["sink_rule"], "sink_rate": round(float(met["metrics"]["sink_rate"]), 4),
                    "n_prompts": len(PROMPTS), "n_layers": n_layers, "n_heads": n_heads,
                    "n_heads_total": n_layers * n_heads}

    ind = np.asarray(met["metrics"]["induction"], dtype=np.float64)
    order = np.argsort(-ind, axis=None)
    top = [[int(i // n_heads), int(i % n_heads)] for i in order[:N_OFF]]
    out["induction"] = {
        "best": {"layer": top[0][0], "head": top[0][1], "score": round(float(ind[tuple(top[0])]), 2)},
        "top": [{"layer": l, "head": h, "score": round(float(ind[l, h]), 2)} for l, h in top],
        "heads_above_0.3": int((ind > 0.3).sum()), "threshold": 0.3,
    }

    if run_c:
        out.update(importance_numbers(base, run_c, top, n_layers, n_heads))
    out["streaming"] = streaming_numbers(run_b)
    return out


def importance_numbers(base: str, run_c: str, top: list[list[int]], n_layers: int, n_heads: int) -> dict[str, Any]:
    """Pruning curves at :data:`PRUNE_FRACTION` and live pruning of ``top`` (and of random heads) on run C."""
    import numpy as np  # noqa: PLC0415

    from backend import names  # noqa: PLC0415

    out: dict[str, Any] = {}
    keys = [names.pruning(o, k) for o in ("importance", "random", "reverse") for k in ("fractions", "perplexity")]
    arr = arrays(run_c, keys)
    curves: dict[str, Any] = {"fraction_removed": PRUNE_FRACTION, "percent_removed": int(100 * PRUNE_FRACTION)}
    for o in ("importance", "random", "reverse"):
        fr, ppl = arr[names.pruning(o, "fractions")], arr[names.pruning(o, "perplexity")]
        i = int(np.argmin(np.abs(fr - PRUNE_FRACTION)))
        curves[o] = round(float(ppl[i]), 1)
        curves["heads_removed"] = int(round(fr[i] * n_layers * n_heads))
        curves["unpruned"] = round(float(ppl[0]), 1)
    curves["n_prompts"] = len(CURVE_PROMPTS)
    curves["data"] = "run C's prompts (the curves use the run's own inputs, not held-out text)"
    out["pruning_curves"] = curves

    rep = CURVE_KINDS.index("repeated prose")
    live = prune(base, run_c, top, rep)
    rng = random.Random(0)
    ctrl_heads = sorted(rng.sample([[l, h] for l in range(n_layers) for h in range(n_heads) if [l, h] not in top], N_OFF))
    ctrl = prune(base, run_c, ctrl_heads, rep)
    out["live_pruning"] = {
        "heads_off": top, "n_heads_off": N_OFF, "prompt": rep, "objective": live.get("objective"),
        "loss_before": round(live["before"]["loss"], 2), "loss_after": round(live["after"]["loss"], 2),
        "perplexity_before": round(live["before"]["perplexity"], 1),
        "perplexity_after": round(live["after"]["perplexity"], 1),
        "random_heads_off": ctrl_heads, "random_seed": 0,
        "loss_after_random": round(ctrl["after"]["loss"], 2),
        "perplexity_after_random": round(ctrl["after"]["perplexity"], 1),
        "top5_before": live["predictions"]["before"], "top5_after": live["predictions"]["after"],
    }
    return out


def streaming_numbers(run_b: str) -> dict[str, Any]:
    """Run B's perplexities over the tokens predicted after the first eviction (as the page shows them)."""
    from backend import names  # noqa: PLC0415
    from backend.figures_sinks import streaming_perplexity  # noqa: PLC0415

    s = arrays(run_b, [names.streaming(k) for k in ("nll_full", "nll_window", "nll_sink", "params", "reassigned")])
    window, sinks = (int(x) for x in s[names.streaming("params")])
    ppl = streaming_perplexity(s[names.streaming("nll_full")], s[names.streaming("nll_window")],
                               s[names.streaming("nll_sink")], window, sinks)
    return {"tokens": len(s[names.streaming("nll_full")]) + 1, "window": window, "sinks": sinks,
            "positions_reassigned": bool(int(s[names.streaming("reassigned")])),
            "scored_from_position": ppl["first"], "scored_tokens": ppl["n"],
            "dense": round(ppl["full"], 2), "window_only": round(ppl["window"], 2),
            "window_sinks": round(ppl["sink"], 2),
            "text_source": "pydoc_data prose paragraphs (Python language reference)"}


# --- screenshots -------------------------------------------------------------------------------------------------

def shrink(path: Path) -> None:
    """Keep a PNG under :data:`MAX_PNG_BYTES`: re-encode with an adaptive 256-colour palette when larger."""
    from PIL import Image  # noqa: PLC0415

    if path.stat().st_size <= MAX_PNG_BYTES:
        return
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        raise RuntimeError(f"{path} is {path.stat().st_size} bytes even with 256 colours; crop it further")


def shot(page, selectors: list[str], path: Path, pad: int = 2) -> None:
    """Screenshot the union of the elements' boxes (the figure and its caption lines), then :func:`shrink`."""
    boxes = [page.locator(s).first.bounding_box() for s in selectors]
    boxes = [b for b in boxes if b]
    if not boxes:
        raise RuntimeError(f"nothing to screenshot for {selectors}")
    sx, sy = page.evaluate("[window.scrollX, window.scrollY]")  # boxes are in viewport coordinates
    x0, y0 = min(b["x"] for b in boxes) + sx - pad, min(b["y"] for b in boxes) + sy - pad
    x1 = max(b["x"] + b["width"] for b in boxes) + sx + pad
    y1 = max(b["y"] + b["height"] for b in boxes) + sy + pad
    page.screenshot(path=str(path), full_page=True,
                    clip={"x": max(0, x0), "y": max(0, y0), "width": x1 - max(0, x0), "height": y1 - max(0, y0)})
    shrink(path)
    print(f"  {path}: {path.stat().st_size // 1000} kB", flush=True)


def screenshots(base: str, run_a: str, run_b: str, run_c: str | None, nums: dict[str, Any]) -> dict[str, str]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    out = {
        "sinks": ASSETS / "screenshot-first-run-sinks.png",
        "atlas": ASSETS / "screenshot-first-run-atlas.png",
        "importance": ASSETS / "screenshot-first-run-importance.png",
        "live_pruning": ASSETS / "screenshot-first-run-pruning.png",
        "streaming": ASSETS / "screenshot-first-run-streaming.png",
    }
    graph = "document.querySelector('{0} .main-svg') && document.querySelector('{0} .gtitle')"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        page.goto(f"{base}/runs/{run_a}/sinks?eps={EPS}")
        page.wait_for_function(graph.format("#sinks-grid"), timeout=120_000)
        page.wait_for_function("document.querySelector('#sinks-rate')?.innerText.includes('Sink rate')")
        page.wait_for_timeout(1500)
        shot(page, ["#sinks-rate", "#sinks-grid"], out["sinks"])

        page.goto(f"{base}/runs/{run_a}/atlas?colour=induction")
        page.wait_for_function("document.querySelector('#atlas-grid .gtitle')?.textContent.includes('induction')",
                               timeout=120_000)
        page.wait_for_timeout(1500)
        shot(page, ["#atlas-summary", "#atlas-grid"], out["atlas"])

        if not run_c:
            out.pop("importance"), out.pop("live_pruning")
        else:
            importance_shots(page, base, run_c, nums, out)

        page.goto(f"{base}/runs/{run_b}/sinks")
        page.wait_for_selector("#sinks-streaming .scatterlayer .trace", state="attached", timeout=120_000)
        page.wait_for_timeout(1500)
        shot(page, ["#sinks-streaming-text", "#sinks-streaming"], out["streaming"])
        browser.close()
    return {k: str(v.relative_to(REPO)) for k, v in out.items()}


def importance_shots(page, base: str, run_c: str, nums: dict[str, Any], out: dict[str, Path]) -> None:
    """The importance grid with its pruning curves, and live pruning of the strongest induction heads."""
    page.goto(f"{base}/runs/{run_c}/importance?metric=perplexity")
    page.wait_for_function("document.querySelector('#imp-curves .gtitle')?.textContent.includes('perplexity')",
                           timeout=120_000)
    page.wait_for_selector("#imp-curves .scatterlayer .trace", state="attached")
    page.wait_for_timeout(1500)
    shot(page, ["#imp-grid", "#imp-curves-text", "#imp-curves"], out["importance"])

    off = ",".join(f"{l}-{h}" for l, h in nums["live_pruning"]["heads_off"])
    page.goto(f"{base}/runs/{run_c}/importance?metric=perplexity&off={off}&prompt={nums['live_pruning']['prompt']}")
    page.wait_for_selector("#imp-head-grid button.off", state="attached", timeout=120_000)
    page.click("#imp-run")  # the same job as the API's above: a cache hit
    page.wait_for_selector("#imp-result-table", timeout=600_000)
    page.wait_for_timeout(1000)
    shot(page, ["#imp-off-text", "#imp-result"], out["live_pruning"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="port of the app it starts (default: a free one)")
    ap.add_argument("--app", default="", help="use this running app instead of starting one (its REDIS_URL, "
                    "ATLAS_KEY_PREFIX and ATLAS_QUEUE in the environment, for reading arrays)")
    ap.add_argument("--without-importance", action="store_true",
                    help="skip run C (importance, pruning curves, live pruning): the slowest part")
    args = ap.parse_args()
    t0 = time.time()
    if args.app:
        redis_server, proc, base = None, None, args.app.rstrip("/")
    else:
        redis_server, proc, base = start_app(args.port or _free_port())
    try:
        print(f"app at {base}; submitting the runs", flush=True)
        text = long_text()
        run_a = submit(base, PROMPTS, RUN_A)
        run_c = None if args.without_importance else submit(base, CURVE_PROMPTS, RUN_C)
        run_b = submit(base, [text], RUN_B)
        body_a, body_b = wait_run(base, run_a), wait_run(base, run_b)
        body_c = wait_run(base, run_c) if run_c else None
        nums = numbers(base, run_a, run_b, run_c)
        print(json.dumps(nums, indent=1), flush=True)
        images = screenshots(base, run_a, run_b, run_c, nums)
        result = {
            "what": "the numbers shown in the README's 'First run' screenshots (scripts/readme_screenshots.py)",
            "model": MODEL, "run_a": run_a, "run_b": run_b, "run_c": run_c,
            "analyses": {"a": RUN_A, "b": RUN_B, "c": RUN_C if run_c else None},
            "prompts_a": [{"kind": k, "tokens": len(t)} for k, t in zip(PROMPT_KINDS, body_a["tokens"])],
            "prompts_c": [{"kind": k, "tokens": len(t)} for k, t in zip(CURVE_KINDS, body_c["tokens"])]
            if body_c else None,
            "tokens_b": len(body_b["tokens"][0]), "notices_b": body_b.get("notices"),
            **nums, "images": images, "machine": platform.platform(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "seconds": round(time.time() - t0),
        }
        OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {OUT_JSON.relative_to(REPO)} in {time.time() - t0:.0f} s", flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            redis_server.stop()


if __name__ == "__main__":
    main()
