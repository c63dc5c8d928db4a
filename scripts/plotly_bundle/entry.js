// plotly.js with only the trace types Attention Atlas draws (the full bundle is 4.8 MB and takes ~1 s of a page
// load to evaluate on a 2-core machine; this one is ~1.6 MB). Dash's dcc.Graph uses window.Plotly when a script
// has defined it, so the app loads this file from assets/vendor/ and never the full bundle.
//
// It also sets window.regeneratorRuntime, the one global of Dash's @babel/polyfill that its renderer and components
// still use (for their lazily loaded chunks; a current browser has every other global natively): with this bundle the
// app drops that 100 kB polyfill from its pages (app/preload.py).
//
// Keep TRACES in step with the figures: tests/unit/test_plotly_bundle.py fails when backend/ or app/ draws a trace
// type that is not registered here, or when plotly.js's version here differs from the Python plotly package's.
'use strict';
var Plotly = require('plotly.js/lib/core');  // scatter is always in core

Plotly.register([
    require('plotly.js/lib/bar'),
    require('plotly.js/lib/heatmap'),
    require('plotly.js/lib/image'),
    require('plotly.js/lib/scattergl'),
]);

window.regeneratorRuntime = require('regenerator-runtime/runtime');

module.exports = Plotly;
