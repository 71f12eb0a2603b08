#!/usr/bin/env node
/**
 * The `multileg` executable: checks the Node.js version before anything loads undici (which dies
 * on older Node with an unhelpful TypeError), then runs the command line.
 */
import { unsupportedNode } from '../node-version.ts';

const reason = unsupportedNode();
if (reason) {
  process.stderr.write(`${reason}\n`);
  process.exitCode = 1;
} else {
  await import('./main.ts');
}
