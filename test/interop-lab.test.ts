/**
 * The real-peer lab itself (H5 / M3 / M4 peers): every server the harness starts answers as the recipe
 * says, checked with curl as an independent client, so that a red interop test can be told apart from
 * a broken peer. Proxies: squid (Basic/Negotiate/fake NTLM) and Apache's GSSAPI forward proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Lab, requirePeer, run, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache', 'squid', 'curl', 'gssntlmssp');

describe.skipIf(!havePeers)('lab: real peers answer like the recipe (curl reference)', () => {
  let lab: Lab;
  beforeAll(async () => {
    lab = await startLab({ apache: true, apacheProxy: true, squid: true });
  });
  afterAll(async () => {
    await lab?.stop();
  });

  async function curl(args: string[], env: Record<string, string> = {}): Promise<string> {
    const r = await run(
      '/usr/bin/curl',
      ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', '--cacert', lab.apache!.certFile, ...args],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...lab.env, ...env } },
    );
    return r.stdout || `curl failed: ${r.stderr}`;
  }

  it('M4 M3: Apache /public, /basic, /digest (MD5) over h2', async () => {
    const o = lab.apache!.origin;
    expect(await curl(['--http2', `${o}/public/`])).toBe('200 2');
    expect(await curl(['--http2', `${o}/basic/`])).toBe('401 2');
    expect(await curl(['--http2', '--basic', '-u', 'alice:alicepw', `${o}/basic/`])).toBe('200 2');
    expect(await curl(['--http2', '--digest', '-u', 'alice:alicepw', `${o}/digest/`])).toBe('200 2');
    expect(await curl(['--http2', '--digest', '-u', 'alice:nope', `${o}/digest/`])).toBe('401 2');
  });

  it('M2: Apache cleartext port speaks h2c (prior knowledge) with Kerberos', async () => {
    expect(
      await curl(['--http2-prior-knowledge', '--negotiate', '-u', ':', `${lab.apache!.cleartextOrigin}/protected/`]),
    ).toBe('200 2');
  });

  it('H5: squid: 407 without credentials; Basic and Negotiate proxy auth on CONNECT, then h2 to Apache', async () => {
    const p = ['--proxy', lab.squid!.origin];
    const o = lab.apache!.origin;
    const noAuth = await run(
      '/usr/bin/curl',
      ['-sS', '-o', '/dev/null', '-w', '%{http_connect}', ...p, '--cacert', lab.apache!.certFile, `${o}/public/`],
      {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...lab.env },
      },
    );
    expect(noAuth.stdout).toBe('407');
    expect(await curl([...p, '--proxy-basic', '-U', 'alice:alicepw', '--http2', `${o}/public/`])).toBe('200 2');
    expect(await curl([...p, '--proxy-negotiate', '-U', ':', '--http2', `${o}/public/`])).toBe('200 2');
  });

  it('H5: Apache GSSAPI forward proxy: 407 without credentials, Negotiate (Kerberos) on CONNECT → 200', async () => {
    const p = ['--proxy', lab.apache!.proxyOrigin!];
    const o = lab.apache!.origin;
    const noAuth = await run(
      '/usr/bin/curl',
      ['-sS', '-o', '/dev/null', '-w', '%{http_connect}', ...p, '--cacert', lab.apache!.certFile, `${o}/public/`],
      {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...lab.env },
      },
    );
    expect(noAuth.stdout).toBe('407');
    expect(await curl([...p, '--proxy-negotiate', '-U', ':', '--http2', `${o}/public/`])).toBe('200 2');
  });
});
