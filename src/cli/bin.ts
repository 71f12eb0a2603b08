#!/usr/bin/env node
/**
 * The `multileg` executable: checks the Node.js version before anything loads undici (which dies
 * on older Node with an unhelpful TypeError), then runs the command line.
 */
import nodeModule from 'node:module';
import { unsupportedNode } from '../node-version.ts';

// Compiled code is cached between runs (Node's module compile cache): a CLI starts many times.
// A default import, since Node 20 has no such export and must still reach the version message.
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

const reason = unsupportedNode();
if (reason) {
  process.stderr.write(`${reason}\n`);
  process.exitCode = 1;
} else {
  // `multileg --help` and `--version` alone print without loading commander (help.ts).
  const only = process.argv.length === 3 ? process.argv[2] : undefined;
  if (only === '--version' || only === '-V') process.stdout.write(`${(await import('./version.ts')).versionText()}\n`);
  else if (!((only === '--help' || only === '-h') && (await import('./help.ts')).printHelp())) {
    // WebAssembly stays on V8's baseline compiler in this short-lived process: after the few
    // responses of one command, undici's HTTP/1.1 parser was being recompiled with TurboFan on a
    // background thread (33 ms) that the process then waited for before it could exit. Set before
    // anything compiles WebAssembly; the library itself leaves V8 alone.
    (await import('node:v8')).setFlagsFromString('--liftoff-only');
    await import('./main.ts');
  }
}
