/**
 * Build step (npm run build, after tsc, before cli-help.ts): makes the installed `multileg` command
 * of the modules tsc emitted in dist/:
 *
 * - dist/bin/main-<hash>.cjs: the command's own modules (dist/cli/main.js and all it imports; the
 *   packages stay in node_modules) as one CommonJS script, which src/cli/code-cache.ts runs with a V8 code cache made after a run: the functions a
 *   request calls come from the cache instead of being compiled at every start (docs/PERFORMANCE.md
 *   "CLI start"). The hash in its name is of its content; the cache file is named after it.
 * - dist/bin/multileg.js and a few chunks beside it: the entry (bin.ts: the Node version check,
 *   `--help` and `--version` alone without the script, then the script), told the script's name.
 *
 * The library itself (dist/index.js) is not bundled.
 */
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build, type Plugin } from 'esbuild';

const dist = new URL('../dist/', import.meta.url);
const out = new URL('bin/', dist);
rmSync(out, { recursive: true, force: true });

const common = {
  bundle: true,
  platform: 'node',
  outdir: fileURLToPath(out),
  // No comments or indentation: less to read, hash and scan (ASCII only: code-cache.ts reads the
  // script as Latin-1). Names stay: stack traces read as the source does, and the source maps
  // (tsc's, followed back to src/, with the sources) lead back to it.
  minifyWhitespace: true,
  legalComments: 'none',
  charset: 'ascii',
  sourcemap: 'linked',
  sourcesContent: true,
  logLevel: 'warning',
} as const;

const UNDICI_CORE = fileURLToPath(new URL('cli/undici-core.js', dist));
const DOCTOR = fileURLToPath(new URL('cli/doctor.js', dist));

/**
 * Our modules' `import ... from 'undici'` is undici-core.ts (the parts of undici a request uses),
 * as its module hook makes it when run from the source; doctor's excepted (it loads undici's index).
 */
const undiciCore: Plugin = {
  name: 'undici-core',
  setup(b) {
    b.onResolve({ filter: /^undici$/ }, ({ importer }) =>
      importer === UNDICI_CORE || importer === DOCTOR ? { path: 'undici', external: true } : { path: UNDICI_CORE },
    );
  },
};

const script = await build({
  ...common,
  entryPoints: { main: fileURLToPath(new URL('cli/main.js', dist)) },
  entryNames: '[name]-[hash]',
  outExtension: { '.js': '.cjs' },
  format: 'cjs',
  target: 'node22',
  // Packages stay packages (undici, commander, debug, tough-cookie, kerberos, koffi): updated with
  // npm, seen by npm audit, the versions --version names. Inside the script, their functions would
  // come from the cache too (~10% fewer instructions a request, measured), at that cost.
  packages: 'external',
  // import() of a package or of Node's own modules: require, as in any CommonJS module.
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__multilegUrl' },
  // Strict as the modules were, also where Node's loader runs it (code-cache.ts: source maps):
  // esbuild's own "use strict" comes after the banner, where it is no directive.
  banner: { js: '"use strict";var __multilegUrl = require("node:url").pathToFileURL(__filename).href;' },
  plugins: [undiciCore],
  metafile: true,
});
const [name] = Object.keys(script.metafile.outputs)
  .filter((file) => file.endsWith('.cjs'))
  .map((file) => file.slice(file.lastIndexOf('/') + 1));
if (!name) throw new Error('bundle-cli: no script was written');

await build({
  ...common,
  entryPoints: { multileg: fileURLToPath(new URL('cli/bin.js', dist)) },
  // Chunks beside the entry: modules find files by their own URL (../../package.json, help.json).
  chunkNames: '[name]-[hash]',
  splitting: true,
  format: 'esm',
  // The entry must still parse on Node 20 to say which Node it needs (src/cli/bin.ts).
  target: 'node20',
  packages: 'external',
  define: { 'import.meta.multilegScript': JSON.stringify(`./${name}`) },
  plugins: [
    {
      // The command's modules are the script's; bin.ts imports main.ts only when run from the source.
      name: 'main-is-the-script',
      setup(b) {
        b.onResolve({ filter: /^\.\/main\.js$/ }, ({ path }) => ({ path, external: true }));
      },
    },
  ],
});
