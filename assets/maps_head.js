/* The maps page's single-head map in the browser (app/pages/maps.py).

   fill_hover: the server's figure carries, per trace, its points' indices into the run's hover table
   (customdata, int32) instead of texts; the table comes once per page (maps-hover). The indices stay on the
   traces: a head switch reuses them.

   switch_head: a layer/head change redraws the map here when it can: every head of a run has the same points
   in the same order (the worker samples the same tokens for all heads), so the drawn figure keeps its traces,
   colours and hover texts and only takes the new head's coordinates, fetched as raw float32
   (GET /api/runs/<id>/embedding.f32, app/api_maps.py) and set with one Plotly.update. When it cannot (no map drawn
   yet, another run/projection, other points, a failed fetch), it writes maps-pick and the server draws the head.
   The other heads of the drawn layer are fetched ahead (a few MB at most), so a switch within a layer is drawn
   without waiting for the network.
*/
(function () {
    "use strict";

    const GRAPH = "#maps-head-fig .js-plotly-plot";

    function decodeIndices(c) {
        if (!c || c.bdata === undefined) { return c; }
        const bin = atob(c.bdata), bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
        return new Int32Array(bytes.buffer);
    }

    function triggeredBy(name) {
        const ctx = window.dash_clientside.callback_context;
        return !!(ctx && ctx.triggered && ctx.triggered.some((t) => t.prop_id.startsWith(name + ".")));
    }

    /* What the graph shows now: the view the server put in layout.meta, updated here on each switch. */
    function drawnView(gd) {
        const meta = gd && gd.layout && gd.layout.meta;
        return meta && meta.atlas === "qk-map" ? meta : null;
    }

    /* New x and y of every trace: its points (customdata indices) at the new head's coordinates. */
    function traceCoordinates(gd, xy) {
        const xs = [], ys = [];
        for (const t of gd.data) {
            const idx = t.customdata;
            if (!(idx instanceof Int32Array)) { return null; }
            const x = new Float32Array(idx.length), y = new Float32Array(idx.length);
            for (let j = 0; j < idx.length; j++) {
                const i = idx[j];
                if (2 * i + 1 >= xy.length) { return null; }
                x[j] = xy[2 * i];
                y[j] = xy[2 * i + 1];
            }
            xs.push(x);
            ys.push(y);
        }
        return [xs, ys];
    }

    /* Fetched coordinates by URL (promises of an ArrayBuffer, or null when the answer cannot be used), the most
       recent CACHE_MAX heads: the other heads of the drawn layer are fetched ahead, one at a time, once a map is
       drawn, so that a switch within the layer needs no request. */
    const CACHE_MAX = 48;
    const cache = new Map();

    function coordinatesUrl(view, layer, head) {
        const q = new URLSearchParams({layer: layer, head: head,
                                       method: view.normalised ? view.method : view.method + "_raw"});
        return `/api/runs/${encodeURIComponent(view.run)}/embedding.f32?${q}`;
    }

    function coordinates(view, layer, head) {
        const url = coordinatesUrl(view, layer, head);
        let got = cache.get(url);
        if (got === undefined) {
            got = fetch(url, {credentials: "same-origin"})
                .then((r) => (r.ok && r.headers.get("X-Atlas-Points") === view.points ? r.arrayBuffer() : null))
                .catch(() => null)
                .then((buf) => { if (buf === null) { cache.delete(url); } return buf; });
            cache.set(url, got);
            while (cache.size > CACHE_MAX) { cache.delete(cache.keys().next().value); }
        }
        return got;
    }

    function prefetchLayer(view) {
        const heads = [];
        for (let h = 0; h < (view.n_heads || 0); h++) { if (h !== view.head) { heads.push(h); } }
        setTimeout(() => heads.reduce((done, h) => done.then(() => coordinates(view, view.layer, h)),
                                      Promise.resolve()), 250);
    }

    async function redraw(gd, view, layer, head) {
        const buf = await coordinates(view, layer, head);
        if (buf === null) { return false; }
        const xy = new Float32Array(buf);
        if (drawnView(gd) !== view) { return false; }  // the server drew another figure meanwhile
        const coords = traceCoordinates(gd, xy);
        if (!coords) { return false; }
        const title = ((gd.layout.title && gd.layout.title.text) || "")
            .replace(/^layer \d+ head \d+/, `layer ${layer} head ${head}`);
        const shown = Object.assign({}, view, {layer: layer, head: head});
        await window.Plotly.update(gd, {x: coords[0], y: coords[1]}, {
            "title.text": title, "xaxis.autorange": true, "yaxis.autorange": true, meta: shown,
        });
        if (shown.layer !== view.layer) { prefetchLayer(shown); }
        return true;
    }

    window.dash_clientside = Object.assign({}, window.dash_clientside, {
        maps_head: {
            fill_hover: function (raw, hover, layer, head) {
                const nu = window.dash_clientside.no_update;
                if (!raw || !raw.fig) { return nu; }
                const view = raw.fig.layout && raw.fig.layout.meta;
                if (view && view.atlas === "qk-map" && (view.layer !== layer || view.head !== head)) {
                    // drawn for a head the user has left meanwhile (its request was in flight): draw the current one
                    window.dash_clientside.set_props("maps-pick", {data: {layer: layer, head: head, t: Date.now()}});
                    return nu;
                }
                if (view && view.atlas === "qk-map") { prefetchLayer(view); }
                if (!raw.hover) { return raw.fig; }
                if (!hover || hover.key !== raw.hover) { return nu; }
                const text = hover.text;
                const data = raw.fig.data.map((t) => {
                    const idx = decodeIndices(t.customdata);
                    if (!idx) { return t; }
                    return Object.assign({}, t, {customdata: idx, hovertext: Array.from(idx, (i) => text[i])});
                });
                return Object.assign({}, raw.fig, {data: data});
            },

            switch_head: async function (layer, head, mode, run, runId, method, norm) {
                const nu = window.dash_clientside.no_update;
                const server = {layer: layer, head: head, t: Date.now()};
                if (triggeredBy("maps-mode") || triggeredBy("maps-run") || !run || mode !== "head"
                        || layer == null || head == null) {
                    return nu;  // another view, or the change of mode or run itself draws the head (render_head)
                }
                const gd = document.querySelector(GRAPH);
                const view = drawnView(gd);
                const normalised = (norm || []).includes("on");
                if (!view || !window.Plotly || view.run !== runId || view.method !== method
                        || view.normalised !== normalised) {
                    return server;
                }
                if (view.layer === layer && view.head === head) { return nu; }
                try {
                    return (await redraw(gd, view, layer, head)) ? nu : server;
                } catch (e) {
                    return server;
                }
            },
        },
    });
})();
