#!/usr/bin/env node
/**
 * The `multileg` executable: checks the Node.js version before anything loads undici (which dies
 * on older Node with an unhelpful TypeError), then runs the command line.
 */
import nodeModule from 'node:module';
import { fileURLToPath } from 'node:url';
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
  else if (!((only === '--help' || only === '-h') && (await import('./help.ts')).printHelp())) await runCommand();
}

/**
 * The command itself. Installed, it is one script beside this file, which the build names here
 * (scripts/bundle-cli.ts), run with a code cache of its own (code-cache.ts); from the source (the
 * tests, `npm run multileg`), the modules of src/cli. (No V8 flag here: one set before Node's own
 * modules load costs them their code cache; wasm.ts.)
 */
async function runCommand(): Promise<void> {
  const script = (import.meta as ImportMeta & { multilegScript?: string }).multilegScript;
  if (script === undefined) {
    await (await import('./main.ts')).runCommand();
    return;
  }
  const { runCached } = await import('./code-cache.ts');
  const command = runCached<typeof import('./main.ts')>(fileURLToPath(new URL(script, import.meta.url)));
  if ((await command.exports.runCommand()) === 0) command.save(command.exports.exercised());
}
