/**
 * Build step (npm run build, after tsc, before cli-help.ts): joins the `multileg` command's modules, as
 * tsc emitted them in dist/, into dist/bin/multileg.js and a few chunks beside it, which the
 * command's lazy `import()`s load (Negotiate's handshake, doctor, the proxy resolver...).
 * A command starts many times: one request loaded 61 separate ES modules of ours, each resolved,
 * read and linked on its own; joined, the command starts ~9 ms sooner (docs/PERFORMANCE.md "CLI
 * start"). The packages (undici, commander, debug, kerberos, koffi) stay outside, resolved from
 * node_modules as the library resolves them. The library itself (dist/index.js) is not bundled.
 */
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const dist = new URL('../dist/', import.meta.url);
const out = new URL('bin/', dist);
rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: { multileg: fileURLToPath(new URL('cli/bin.js', dist)) },
  outdir: fileURLToPath(out),
  // Chunks beside the entry: modules find files by their own URL (../../package.json, help.json).
  chunkNames: '[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  // The entry must still parse on Node 20 to say which Node it needs (src/cli/bin.ts).
  target: 'node20',
  packages: 'external',
  // No comments or indentation: a request's chunks are ~30% smaller and ASCII only, which Node
  // reads, decodes, hashes against its compile cache and V8 scans (for each function compiled at
  // its first call) faster: ~3% of a request's instructions (docs/PERFORMANCE.md "CLI start").
  // Names stay: stack traces read as the source does, and the source maps lead back to it.
  minifyWhitespace: true,
  legalComments: 'none',
  // The source maps tsc wrote are followed back to src/ (they carry the sources).
  sourcemap: 'linked',
  sourcesContent: true,
  logLevel: 'warning',
});
