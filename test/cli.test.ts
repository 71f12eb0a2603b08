import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCli } from '../src/cli/options.ts';
import { ConfigError } from '../src/errors.ts';
import { type ReferenceServer, startReferenceServer } from '../src/reference-server/index.ts';

const main = new URL('../src/cli/main.ts', import.meta.url).pathname;
const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  promisify(execFile)(process.execPath, [main, ...args], { env: { ...process.env, ...env } }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('multileg command line', () => {
  let server: ReferenceServer;
  let dir: string;
  let ca: string;
  beforeAll(async () => {
    server = await startReferenceServer({ mode: 'session' });
    dir = mkdtempSync(join(tmpdir(), 'multileg-cli-'));
    ca = join(dir, 'ca.pem');
    writeFileSync(ca, server.ca);
  });
  afterAll(async () => {
    await server.close();
  });

  it('authenticates with NTLM over HTTP/2 and prints the body; -v reports the handshake without secrets', async () => {
    const { code, stdout, stderr } = await run([
      '-v',
      '-u',
      'EXAMPLE\\alice:alicepw',
      '--cacert',
      ca,
      `${server.origin}/auth/cli`,
    ]);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({ user: 'EXAMPLE\\alice', protocol: 'h2' });
    expect(stderr).toMatch(/handshake Negotiate on session s\d+ \(h2\): 2 legs, Auth-ID carried, session/);
    expect(stderr).not.toContain('alicepw');
  });

  it('sends a body with -d, over HTTP/1.1 with --http1.1, and prints headers with -i', async () => {
    const { code, stdout } = await run(
      ['-i', '--http1.1', '-d', 'hello', '-u', 'EXAMPLE\\alice', '--cacert', ca, `${server.origin}/auth/post`],
      {
        MULTILEG_PASSWORD: 'alicepw',
      },
    );
    expect(code).toBe(0);
    expect(stdout).toMatch(/^HTTP 200\n/);
    const body = JSON.parse(stdout.slice(stdout.indexOf('\n\n') + 2)) as {
      method: string;
      bodyLength: number;
      protocol: string;
    };
    expect(body).toMatchObject({ method: 'POST', bodyLength: 5, protocol: 'http/1.1' });
  });

  it('exits 22 with --fail on a 401, and 1 with a typed error that names the fix', async () => {
    const failed = await run(['-f', '-u', 'EXAMPLE\\alice:wrong', '--cacert', ca, `${server.origin}/auth/x`]);
    expect(failed.code).toBe(22);
    const limited = await run([
      '--max-legs',
      '1',
      '-u',
      'EXAMPLE\\alice:alicepw',
      '--cacert',
      ca,
      `${server.origin}/auth/x`,
    ]);
    expect(limited.code).toBe(1);
    expect(limited.stderr).toContain('limits.maxLegs');
    expect(limited.stderr).toContain('MULTILEG_LEG_LIMIT');
  });

  it('writes the body to a file with -o', async () => {
    const out = join(dir, 'out.json');
    const { code } = await run([
      '-o',
      out,
      '-u',
      'EXAMPLE\\alice:alicepw',
      '--cacert',
      ca,
      `${server.origin}/auth/file`,
    ]);
    expect(code).toBe(0);
    expect(JSON.parse(readFileSync(out, 'utf8'))).toMatchObject({ user: 'EXAMPLE\\alice' });
  });

  it('rejects bad usage with exit code 2', async () => {
    expect((await run([])).code).toBe(2);
    const noPassword = await run(['-u', 'alice', 'https://localhost:1/'], {
      MULTILEG_PASSWORD: undefined as unknown as string,
    });
    expect(noPassword.code).toBe(2);
    expect(noPassword.stderr).toContain('MULTILEG_PASSWORD');
  });

  it('parses options into agent options', () => {
    const req = parseCli(
      ['-X', 'put', '-H', 'X-A: 1', '--schemes', 'NTLM,Negotiate', '--spn', 'HTTP@web', '--delegate', 'https://h/p'],
      {
        MULTILEG_PASSWORD: 'x',
      },
    );
    expect(req.method).toBe('PUT');
    expect(req.headers).toEqual({ 'x-a': '1' });
    expect(req.agent.schemes).toEqual(['NTLM', 'Negotiate']);
    expect(req.agent.negotiate).toEqual({ spn: 'HTTP@web', delegate: true });
    expect(() => parseCli(['-H', 'nocolon', 'https://h/'])).toThrow(ConfigError);
    expect(() => parseCli(['--cert', 'a.pem', 'https://h/'])).toThrow(ConfigError);
  });
});
