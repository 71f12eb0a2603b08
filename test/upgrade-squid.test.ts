/**
 * An upgrade (WebSocket-style) request through a real proxy (H5): Squid with Basic proxy
 * authentication opens the CONNECT tunnel, and the origin behind it challenges the upgrade with NTLM
 * — proxy credentials to Squid only, origin credentials to the origin only, every origin leg on the
 * one tunnel.
 */
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { upgrade } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MultilegAgent } from '../src/index.ts';
import { ALICE } from './helpers.ts';
import { type Lab, requirePeer, startLab } from './lab/index.ts';
import { read, type UpgradeServer, upgradeServer } from './upgrade-origin.ts';

const havePeers = requirePeer('kdc', 'squid');

describe.skipIf(!havePeers)('upgrades through Squid (real peer)', () => {
  let lab: Lab;
  let origin: UpgradeServer;
  beforeAll(async () => {
    lab = await startLab({ squid: true });
    origin = await upgradeServer({ ntlm: true });
  }, 60_000);
  afterAll(async () => {
    await origin?.close();
    await lab?.stop();
  });

  it('H5: an upgrade through Squid (Basic) to an origin that challenges it with NTLM: 101 on the one tunnel', async () => {
    const agent = new MultilegAgent({
      credentials: ALICE,
      trustedOrigins: [origin.origin],
      negotiate: false,
      proxy: { uri: lab.squid!.origin, credentials: { username: 'alice', password: 'alicepw' }, schemes: ['Basic'] },
    });
    try {
      const { socket } = await upgrade(`${origin.origin}/ws`, { dispatcher: agent, protocol: 'websocket' });
      expect(await read(socket as Socket, 20)).toBe('hello EXAMPLE\\alice\n');
      socket.write('through squid');
      expect(await read(socket as Socket, 13)).toBe('through squid');
      socket.destroy();
      // Every origin leg came through one connection: the tunnel Squid opened.
      expect(origin.seen.map((s) => [s.connection, s.authorization, s.status])).toEqual([
        [1, undefined, 401],
        [1, 'NTLM/1', 401],
        [1, 'NTLM/3', 101],
      ]);
      // Squid logs the 407 at once and the tunnel when it closes: CONNECT to the origin as alice.
      const tunnel = `localhost:${origin.port}`;
      const connects = () =>
        readFileSync(join(lab.dir, 'squid/logs/access.log'), 'utf8')
          .split('\n')
          .map((l) => l.trim().split(/\s+/))
          .filter((f) => f[5] === 'CONNECT' && f[6] === tunnel)
          .map((f) => [f[3], f[7]]);
      for (let i = 0; i < 250 && connects().length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      expect(connects()).toEqual([
        ['TCP_DENIED/407', '-'],
        ['TCP_TUNNEL/200', 'alice'],
      ]);
    } finally {
      await agent.destroy();
    }
  });
});
