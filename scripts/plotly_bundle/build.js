// Bundle entry.js into one minified IIFE that sets window.Plotly, with plotly.js's own esbuild settings
// (node_modules/plotly.js/esbuild-config.js: shaders inlined, CSS inlined, the regl fork, browser shims).
//
//   node build.js OUTFILE
'use strict';
const path = require('path');
const esbuild = require('esbuild');
const { environmentPlugin } = require('esbuild-plugin-environment');
const { glsl } = require('esbuild-plugin-glsl');
const InlineCSSPlugin = require('esbuild-plugin-inline-css');

const outfile = process.argv[2] && path.resolve(process.argv[2]);
if (!outfile) {
    console.error('usage: node build.js OUTFILE');
    process.exit(2);
}
esbuild.build({
    absWorkingDir: __dirname,  // the aliases below resolve from here
    entryPoints: ['./entry.js'],
    outfile,
    format: 'iife',
    globalName: 'Plotly',
    bundle: true,
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    banner: { js: `/* plotly.js ${require('plotly.js/package.json').version} (MIT, Plotly, Inc.): bar, heatmap, image, scatter, scattergl; regenerator-runtime ${require('regenerator-runtime/package.json').version} (MIT, Facebook, Inc.) */` },
    plugins: [InlineCSSPlugin(), glsl({ minify: true }), environmentPlugin({ NODE_DEBUG: false })],
    alias: { regl: '@plotly/regl', stream: 'stream-browserify' },
    define: { global: 'window', 'define.amd': 'false' },
    target: 'es2016',
    logLevel: 'warning',
}).catch(() => process.exit(1));
