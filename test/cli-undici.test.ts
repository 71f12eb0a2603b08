/**
 * The command's request path loads only the parts of undici it uses (src/cli/undici-core.ts, issue
 * 10 item 5): the same objects undici's index exports, and not the index with fetch, WebSocket,
 * the caches and the mocks.
 */
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as undici from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as core from '../src/cli/undici-core.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';
import { runCli, runCommand } from './cli-helpers.ts';

describe('undici-core', () => {
  let server: ReferenceServer;
  let ca: string;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session', schemes: ['NTLM'] });
    ca = join(mkdtempSync(join(tmpdir(), 'multileg-core-')), 'ca.pem');
    writeFileSync(ca, server.ca);
  });
  afterAll(() => server.close());

  it('exports the very Dispatcher, Client, buildConnector and errors of undici’s index, with its request API', () => {
    expect(core.Dispatcher).toBe(undici.Dispatcher);
    expect(core.Client).toBe(undici.Client);
    expect(core.buildConnector).toBe(undici.buildConnector);
    expect(core.errors.HeadersTimeoutError).toBe(undici.errors.HeadersTimeoutError);
    for (const method of ['request', 'stream', 'pipeline', 'upgrade', 'connect'] as const)
      expect(typeof core.Dispatcher.prototype[method], method).toBe('function');
  });

  it('falls back to undici’s whole package when its files are not where they were, never to another undici’s files', async () => {
    // An undici whose index is the real one but which has no lib/ of its own: as if a later
    // version had moved its files. A folder above holds another copy of undici, whose lib/ a bare
    // 'undici/lib/…' would find (Node goes on to the parent folders' node_modules).
    const real = createRequire(import.meta.url).resolve('undici');
    const outer = mkdtempSync(join(tmpdir(), 'multileg-moved-'));
    cpSync(dirname(real), join(outer, 'node_modules/undici'), { recursive: true });
    const dir = join(outer, 'app');
    mkdirSync(join(dir, 'node_modules/undici'), { recursive: true });
    writeFileSync(join(dir, 'node_modules/undici/package.json'), '{"name":"undici","main":"index.js"}');
    writeFileSync(join(dir, 'node_modules/undici/index.js'), `module.exports = require(${JSON.stringify(real)});\n`);
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}');
    copyFileSync(new URL('../src/cli/undici-core.ts', import.meta.url), join(dir, 'undici-core.ts'));
    writeFileSync(
      join(dir, 'check.ts'),
      [
        "import { createRequire } from 'node:module';",
        "import * as core from './undici-core.ts';",
        `const real = createRequire(import.meta.url)(${JSON.stringify(real)});`,
        'console.log(core.Client === real.Client, core.Dispatcher === real.Dispatcher, core.buildConnector === real.buildConnector);',
      ].join('\n'),
    );
    const r = await runCommand(process.execPath, [join(dir, 'check.ts')]);
    expect(r.stdout, r.stderr).toBe('true true true\n');
  });

  it('an authenticated request from the command loads neither undici’s index nor its fetch', async () => {
    // NODE_DEBUG=module names every CommonJS module loaded (undici is CommonJS).
    const r = await runCli(['-u', 'EXAMPLE\\alice:alicepw', '--cacert', ca, `${server.origin}/auth/core?x=1`], {
      env: { NODE_DEBUG: 'module' },
    });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ user: 'EXAMPLE\\alice', path: '/auth/core?x=1' });
    expect(r.stderr).toContain('undici/lib/dispatcher/client.js');
    expect(r.stderr).not.toMatch(/undici\/index\.js|undici\/lib\/web\//);
  });
});
