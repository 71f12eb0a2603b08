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
  else if (!((only === '--help' || only === '-h') && (await import('./help.ts')).printHelp()))
    // (No V8 flag here: one set before Node's own modules load costs them their code cache; wasm.ts.)
    await import('./main.ts');
}
