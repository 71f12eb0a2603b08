/**
 * Build step (npm run build, after tsc and bundle-cli.ts): writes dist/bin/help.json, beside the
 * command's bundle, the parts of `multileg --help` taken from the built commander program, so
 * `--help` prints without loading commander (src/cli/help.ts; test/cli-help.test.ts checks the
 * layout against commander's own).
 */
import { writeFileSync } from 'node:fs';

const dist = new URL('../dist/cli/', import.meta.url);
const { program } = (await import(new URL('options.js', dist).href)) as typeof import('../src/cli/options.ts');
const { helpData } = (await import(new URL('help.js', dist).href)) as typeof import('../src/cli/help.ts');
writeFileSync(new URL('../bin/help.json', dist), `${JSON.stringify(helpData(program()))}\n`);
