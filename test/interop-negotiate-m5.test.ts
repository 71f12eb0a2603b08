/**
 * M5 against real peers: Kerberos tokens bound to the TLS channel (python3-gssapi acceptor requiring the
 * tls-server-end-point bindings), per-agent ccache and client keytab (several principals in one process,
 * against Apache mod_auth_gssapi, process.env untouched), and the Windows-style fallback from Kerberos to
 * NTLM when Kerberos cannot produce a token (Apache /spnego2 offers `Negotiate` and `NTLM`).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { createSecureContext } from 'node:tls';
import { promisify } from 'node:util';
import { fetch, upgrade } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MultilegAgent, type MultilegAgentOptions } from '../src/index.ts';
import { type NegotiateOptions, negotiateMechanism } from '../src/mechanisms/negotiate/index.ts';
import { BIN } from './cli-helpers.ts';
import { localhostCertificate } from './helpers.ts';
import { headerValues, labClient, legInfo, send, tlsServerEndPoint } from './lab/http.ts';
import { applyEnv, CAROL, type Lab, requirePeer, startLab } from './lab/index.ts';

const havePeers = requirePeer('kdc', 'apache', 'gssntlmssp', 'python-gssapi', 'openssl', 'gss-binding');
const ALICE_NTLM = { username: 'alice', password: 'alicepw', domain: 'EXAMPLE' } as const;

describe.skipIf(!havePeers)('M5 Kerberos as Windows clients do it (real KDC, Apache, python3-gssapi)', () => {
  let lab: Lab;
  let restoreEnv: () => void;
  const agents: MultilegAgent[] = [];
  const cc = (name: string) => `FILE:${join(lab.dir, `${name}.ccache`)}`;
  let aliceCc: string;
  let bobCc: string;
  let svcKeytab: string;
  let certA: { cert: string; key: string };
  let certB: { cert: string; key: string };
  const agent = (o: MultilegAgentOptions) => {
    const a = new MultilegAgent({ connect: { ca: [lab.apache!.ca, certA.cert, certB.cert] }, ...o });
    agents.push(a);
    return a;
  };

  beforeAll(async () => {
    lab = await startLab({ apache: true, pythonAcceptor: true });
    const realm = lab.realm!;
    // The library never reads a ticket cache from here: the default one does not exist, and each agent
    // names its own. Only krb5.conf (realms, KDCs) comes from the environment, as it does for MIT itself.
    restoreEnv = applyEnv({
      KRB5_CONFIG: lab.env.KRB5_CONFIG,
      KRB5CCNAME: `FILE:${join(lab.dir, 'no-default-ccache')}`,
      NTLM_USER_FILE: undefined,
      KRB5_KTNAME: undefined,
    });
    await realm.kadmin('addprinc -pw bobpw bob@EXAMPLE.TEST');
    await realm.kadmin('addprinc -randkey svc@EXAMPLE.TEST');
    await realm.kadmin('addprinc -randkey -maxlife "3 seconds" short@EXAMPLE.TEST');
    svcKeytab = join(lab.dir, 'svc.keytab');
    await realm.kadmin(`ktadd -k ${svcKeytab} svc@EXAMPLE.TEST`);
    await realm.kadmin(`ktadd -k ${join(lab.dir, 'short.keytab')} short@EXAMPLE.TEST`);
    aliceCc = cc('alice');
    bobCc = cc('bob');
    await realm.kinit({ ccache: aliceCc });
    await realm.kinit({ ccache: bobCc, principal: 'bob@EXAMPLE.TEST', password: 'bobpw' });
    certA = localhostCertificate('a');
    certB = localhostCertificate('b');
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.destroy()));
    restoreEnv?.();
    await lab?.stop();
  });

  describe('channel bindings (tls-server-end-point, RFC 5929 / RFC 4121 §4.1.1.2)', () => {
    const acceptorRun = async (
      mech: 'spnego' | 'kerberos',
      sent: Buffer | undefined,
      expected: Buffer,
      o: NegotiateOptions = {},
      requireBindings = false,
    ) => {
      const leg = legInfo('https://localhost:443', '/', sent ? { channelBinding: sent } : {});
      const ctx = negotiateMechanism({ ccache: aliceCc, mech, ...o }).createContext(leg) as ReturnType<
        ReturnType<typeof negotiateMechanism>['createContext']
      > & { channelBound: boolean };
      const header = await ctx.step(undefined, leg);
      await lab.acceptor!.reset(mech === 'kerberos' ? 'krb5' : 'spnego', expected, requireBindings);
      const reply = await lab.acceptor!.step(header.slice('Negotiate '.length));
      return { ctx, reply, leg };
    };

    for (const mech of ['spnego', 'kerberos'] as const) {
      it(`M5: ${mech}: an acceptor requiring its own certificate's bindings accepts the token; one bound to another certificate is rejected`, async () => {
        const own = tlsServerEndPoint(certA.cert);
        const other = tlsServerEndPoint(certB.cert);
        const good = await acceptorRun(mech, own, own);
        expect(good.ctx.channelBound).toBe(true);
        expect(good.reply).toMatchObject({ kind: 'complete', user: 'alice@EXAMPLE.TEST' });
        // the acceptor's AP-REP completes our context (mutual authentication still holds)
        const token = good.reply.kind === 'complete' ? good.reply.token : undefined;
        expect(token).toBeTruthy();
        await good.ctx.finish({ scheme: 'Negotiate', schemeKey: 'negotiate', token68: token!, params: {} }, good.leg);
        expect(good.ctx.complete).toBe(true);

        // What a TLS-terminating relay would forward: bound to the certificate the client saw, not the server's.
        const relayed = await acceptorRun(mech, other, own);
        expect(relayed.reply).toMatchObject({ kind: 'error' });
        expect(relayed.reply.kind === 'error' && relayed.reply.message).toMatch(/Incorrect channel bindings/);

        // Control: MIT accepts a token that carries no bindings at all, so the rejection above is ours;
        // an acceptor that requires bindings (IIS EPA "Required") refuses it, and accepts ours.
        const unbound = await acceptorRun(mech, other, own, { channelBindings: false });
        expect(unbound.ctx.channelBound).toBe(false);
        expect(unbound.reply).toMatchObject({ kind: 'complete', user: 'alice@EXAMPLE.TEST' });
        const strictUnbound = await acceptorRun(mech, undefined, own, {}, true);
        expect(strictUnbound.reply).toMatchObject({
          kind: 'error',
          message: expect.stringMatching(/no channel bindings/),
        });
        const strictBound = await acceptorRun(mech, own, own, {}, true);
        expect(strictBound.reply).toMatchObject({ kind: 'complete', user: 'alice@EXAMPLE.TEST' });
      });
    }

    /** An HTTPS server (h2) presenting `served`, whose GSS acceptor requires the bindings of `expected`. */
    async function cbServer(served: { cert: string; key: string }, expected: string): Promise<Http2SecureServer> {
      const cb = tlsServerEndPoint(expected);
      const server = createSecureServer({ ...served, allowHTTP1: true }, async (req, res) => {
        const auth = req.headers.authorization;
        if (!auth?.startsWith('Negotiate ')) {
          res.writeHead(401, { 'www-authenticate': 'Negotiate' }).end();
          return;
        }
        await lab.acceptor!.reset('spnego', cb, true); // Extended Protection "Required"
        const r = await lab.acceptor!.step(auth.slice('Negotiate '.length));
        if (r.kind === 'complete') {
          res.writeHead(200, { 'www-authenticate': `Negotiate ${r.token}`, 'x-remote-user': r.user }).end('ok');
        } else {
          res.writeHead(401, { 'www-authenticate': 'Negotiate', 'x-gss-error': r.kind === 'error' ? r.message : '' });
          res.end();
        }
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return server;
    }

    it('M5: the agent binds its Kerberos token to the TLS connection: accepted by a server checking its own certificate, refused behind another certificate', async () => {
      const honest = await cbServer(certA, certA.cert);
      const relay = await cbServer(certB, certA.cert); // presents B, its acceptor expects A's bindings
      try {
        const a = agent({ negotiate: { ccache: aliceCc } });
        const ok = await fetch(`https://localhost:${(honest.address() as AddressInfo).port}/`, { dispatcher: a });
        expect(ok.status).toBe(200);
        expect(ok.headers.get('x-remote-user')).toBe('alice@EXAMPLE.TEST');
        expect(a.handshakes().at(-1)).toMatchObject({ scheme: 'Negotiate', identity: 'alice@EXAMPLE.TEST' });

        const b = agent({ negotiate: { ccache: aliceCc } });
        const refused = await fetch(`https://localhost:${(relay.address() as AddressInfo).port}/`, { dispatcher: b });
        expect(refused.status).toBe(401);
        expect(refused.headers.get('x-gss-error')).toMatch(/Incorrect channel bindings/);
      } finally {
        honest.close();
        relay.close();
      }
    });

    it('M5: a proactive Kerberos token on a new connection is bound to that connection too (it connects first: no bare request)', async () => {
      const server = await cbServer(certA, certA.cert);
      const withToken: boolean[] = [];
      server.on('request', (req) => withToken.push(req.headers.authorization !== undefined));
      const open = new Set<import('node:http2').ServerHttp2Session>();
      server.on('session', (s) => {
        open.add(s);
        s.on('close', () => open.delete(s));
      });
      // Connections come and go (idle timeouts, load balancers): the next request opens a new one.
      const dropConnections = () =>
        Promise.all([...open].map((s) => new Promise((resolve) => s.close(() => resolve(undefined)))));
      try {
        const a = agent({ negotiate: { ccache: aliceCc } });
        const url = `https://localhost:${(server.address() as AddressInfo).port}/`;
        for (let i = 0; i < 3; i++) {
          const res = await fetch(url, { dispatcher: a });
          expect(res.status).toBe(200);
          expect(res.headers.get('x-remote-user')).toBe('alice@EXAMPLE.TEST');
          await res.text();
          await dropConnections();
        }
        expect(a.stats().sessions).toBeGreaterThanOrEqual(3); // each request on its own connection
        expect(a.handshakes().every((h) => h.outcome === 'per-request')).toBe(true);
        // Only the very first request goes bare (nothing is known of the origin yet); on each new
        // connection the token, bound to it, goes with the request.
        expect(withToken).toEqual([false, true, true, true]);
      } finally {
        server.close();
      }
    });
  });

  describe('upgrades (WebSocket) with channel bindings', () => {
    /**
     * An HTTPS/1.1 origin that answers upgrades: a bare one gets `401 Negotiate` and `Connection:
     * close` (Apache with KeepAlive off does so); one with a token is checked by a GSS acceptor that
     * requires the bindings of the certificate its own connection presents. `certs`: per connection,
     * in turn (a front end whose backends differ).
     */
    async function upgradeCbServer(certs: readonly { cert: string; key: string }[]) {
      let handshakes = 0;
      let connections = 0;
      const contexts = certs.map((c) => createSecureContext(c));
      const seen: { connection: number; token: boolean; answer: number; user?: string }[] = [];
      const server = createHttpsServer({
        ...certs[0]!,
        SNICallback: (_name, cb) => cb(null, contexts[handshakes++ % certs.length]),
      });
      const numbers = new WeakMap<object, number>();
      server.on('secureConnection', (tls) => numbers.set(tls, ++connections));
      server.on('upgrade', async (req: IncomingMessage, socket: Duplex) => {
        socket.on('error', () => {});
        const connection = numbers.get(socket) ?? 0;
        const auth = req.headers.authorization;
        if (!auth?.startsWith('Negotiate ')) {
          seen.push({ connection, token: false, answer: 401 });
          socket.end(
            'HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Negotiate\r\nconnection: close\r\ncontent-length: 0\r\n\r\n',
          );
          return;
        }
        const own = tlsServerEndPoint(certs[(connection - 1) % certs.length]!.cert);
        await lab.acceptor!.reset('spnego', own, true); // Extended Protection "Required"
        const r = await lab.acceptor!.step(auth.slice('Negotiate '.length));
        if (r.kind === 'complete') {
          seen.push({ connection, token: true, answer: 101, user: r.user });
          socket.write(
            `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nwww-authenticate: Negotiate ${r.token}\r\n\r\nhello ${r.user}\n`,
          );
        } else {
          seen.push({ connection, token: true, answer: 401 });
          socket.end('HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Negotiate\r\ncontent-length: 0\r\n\r\n');
        }
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return { server, seen, origin: `https://localhost:${(server.address() as AddressInfo).port}` };
    }

    it("M5/H1: a wss upgrade's Kerberos token carries the bindings of the connection it goes on: after a bare 401 that closes its connection, the next one's certificate (another here), accepted by an acceptor requiring them", async () => {
      const { server, seen, origin } = await upgradeCbServer([certA, certB]);
      try {
        const a = agent({ negotiate: { ccache: aliceCc } });
        // Before: the token carried certA's bindings (the closed connection's) and certB's acceptor refused it.
        const { socket } = await upgrade(`${origin}/ws`, { dispatcher: a, protocol: 'websocket' });
        const greeting = await new Promise<string>((resolve) =>
          socket.once('data', (d: Buffer) => resolve(d.toString())),
        );
        socket.destroy();
        expect(greeting).toBe('hello alice@EXAMPLE.TEST\n');
        expect(seen).toEqual([
          { connection: 1, token: false, answer: 401 },
          { connection: 2, token: true, answer: 101, user: 'alice@EXAMPLE.TEST' },
        ]);
      } finally {
        server.close();
      }
    });
  });

  describe('per-agent credentials', () => {
    it('M5: three agents in one process — alice and bob by ccache, svc by client keytab — each request runs as its own principal; process.env untouched', async () => {
      const envBefore = { ...process.env };
      const origin = lab.apache!.origin;
      const byName = {
        'alice@EXAMPLE.TEST': agent({ negotiate: { ccache: aliceCc } }),
        'bob@EXAMPLE.TEST': agent({ negotiate: { ccache: bobCc } }),
        'svc@EXAMPLE.TEST': agent({ negotiate: { keytab: `FILE:${svcKeytab}` } }),
      };
      const rounds = await Promise.all(
        Array.from({ length: 3 }, () =>
          Promise.all(
            Object.entries(byName).map(async ([principal, a]) => {
              const res = await fetch(`${origin}/protected/`, { dispatcher: a });
              await res.text();
              return [principal, res.status, res.headers.get('x-remote-user')];
            }),
          ),
        ),
      );
      for (const round of rounds) {
        for (const [principal, status, user] of round) expect([status, user]).toEqual([200, principal]);
      }
      for (const [principal, a] of Object.entries(byName)) {
        expect(a.handshakes().every((h) => h.identity === principal)).toBe(true);
      }
      expect(process.env).toEqual(envBefore);
    });

    it('M5: a keytab agent gets a new ticket by itself when its ticket expires (3-second lifetime)', async () => {
      const a = agent({
        negotiate: { keytab: `FILE:${join(lab.dir, 'short.keytab')}`, principal: 'short@EXAMPLE.TEST' },
      });
      const get = async () => {
        const res = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a });
        await res.text();
        return [res.status, res.headers.get('x-remote-user')];
      };
      expect(await get()).toEqual([200, 'short@EXAMPLE.TEST']);
      await new Promise((r) => setTimeout(r, 4000)); // let the ticket lapse (not a timing assertion)
      expect(await get()).toEqual([200, 'short@EXAMPLE.TEST']);
      const kdcLog = readFileSync(join(lab.realm!.dir, 'kdc.log'), 'utf8');
      expect(kdcLog.match(/AS_REQ .*short@EXAMPLE\.TEST for krbtgt/g)?.length).toBeGreaterThanOrEqual(2);
    });

    it('M5: a missing client keytab is a typed error naming the keytab and the fix', async () => {
      const a = agent({ negotiate: { keytab: `FILE:${join(lab.dir, 'nope.keytab')}` } });
      const err = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a }).catch(
        (e: { cause?: Error }) => e.cause,
      );
      expect(err).toMatchObject({ code: 'MULTILEG_KRB_KEYTAB' });
      expect((err as Error).message).toMatch(/nope\.keytab: check the path/);
    });
    it("M5: a client keytab with no key for negotiate.principal: MULTILEG_KRB_KEYTAB names the principal as given (GSS-API's credential showed EXAMPLE.TEST\\svc and a NUL) and does not suggest passing it", async () => {
      for (const [keytab, principal] of [
        [join(lab.dir, 'nope.keytab'), 'svc@EXAMPLE.TEST'],
        [svcKeytab, 'other@EXAMPLE.TEST'],
      ] as const) {
        const a = agent({ negotiate: { keytab: `FILE:${keytab}`, principal } });
        const err = await fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a }).catch(
          (e: { cause?: Error }) => e.cause,
        );
        expect(err).toMatchObject({ code: 'MULTILEG_KRB_KEYTAB' });
        const message = (err as Error).message;
        expect(message).toContain(`no ticket for ${principal} from the client keytab FILE:${keytab}`);
        expect(message).toContain(`(client ${principal}, `);
        expect(message).not.toContain('\\');
        expect(message).not.toContain('\0');
        expect(message).not.toContain('pass negotiate.principal');
      }
    });
    it('M5: a keytab agent whose ticket expired and cannot be renewed (its key changed in the KDC) gets MULTILEG_KRB_KEYTAB naming the keytab, not "run kinit"', async () => {
      const keytab = join(lab.dir, 'stale.keytab');
      await lab.realm!.kadmin('addprinc -randkey -maxlife "2 seconds" stale@EXAMPLE.TEST');
      await lab.realm!.kadmin(`ktadd -k ${keytab} stale@EXAMPLE.TEST`);
      const a = agent({ negotiate: { keytab: `FILE:${keytab}`, principal: 'stale@EXAMPLE.TEST' } });
      const get = () => fetch(`${lab.apache!.origin}/protected/`, { dispatcher: a });
      const first = await get();
      await first.text();
      expect([first.status, first.headers.get('x-remote-user')]).toEqual([200, 'stale@EXAMPLE.TEST']);
      // The key rotated in the KDC, the file keeps the old one (a keytab not redeployed).
      await lab.realm!.kadmin('cpw -randkey stale@EXAMPLE.TEST');
      await new Promise((r) => setTimeout(r, 3000)); // let the ticket lapse (not a timing assertion)
      const err = await get().catch((e: { cause?: Error }) => e.cause);
      expect(err).toMatchObject({ code: 'MULTILEG_KRB_KEYTAB' });
      expect((err as Error).message).toMatch(
        /stale\.keytab: check the path, that it holds the principal's current keys/,
      );
      expect((err as Error).message).not.toMatch(/kinit/);
    });
  });

  describe('fallback to NTLM when Kerberos cannot produce a token (Apache /spnego2: Negotiate, NTLM)', () => {
    let expiredCc: string;
    beforeAll(async () => {
      const carol = cc('carol');
      await lab.realm!.kinit({ ccache: carol, principal: CAROL.principal, password: CAROL.password });
      expiredCc = cc('expired');
      await lab.realm!.kinit({ ccache: expiredCc, lifetime: '1s' });
      await new Promise((r) => setTimeout(r, 2100)); // let the 1-second ticket expire (not a timing assertion)
    });

    const cases = [
      {
        what: 'a ticket for the wrong realm (carol@OTHER.TEST)',
        code: 'MULTILEG_KRB_WRONG_REALM',
        ccache: () => cc('carol'),
        // carol's ticket on purpose (with alice's password only carol's principal may use it).
        principal: CAROL.principal,
      },
      {
        what: 'an unknown SPN (the host reached by IP)',
        code: 'MULTILEG_KRB_UNKNOWN_SPN',
        ccache: () => aliceCc,
        byIp: true,
      },
      { what: 'an expired ticket', code: 'MULTILEG_KRB_TICKET_EXPIRED', ccache: () => expiredCc },
      { what: 'no ticket', code: 'MULTILEG_KRB_NO_TICKET', ccache: () => cc('none') },
    ];

    it("M5/S6: credentials name bob, the ticket at hand is alice's: Kerberos is skipped and bob authenticates with his password; without a password path, a typed error, never a request as alice", async () => {
      const origin = lab.apache!.origin;
      const bob = { username: 'bob', password: 'bobpw', domain: 'EXAMPLE' };
      const a = agent({ credentials: bob, trustedOrigins: [origin], negotiate: { ccache: aliceCc } });
      const res = await fetch(`${origin}/spnego2/`, { dispatcher: a });
      // Before: 200 as alice@EXAMPLE.TEST, the ticket's owner, whatever the credentials said.
      expect([res.status, res.headers.get('x-remote-user')]).toEqual([200, 'EXAMPLE\\bob']);
      await res.arrayBuffer();
      expect(a.handshakes().at(-1)!.fallbackReason).toMatch(
        /^MULTILEG_KRB_OTHER_PRINCIPAL: the Kerberos ticket is alice@EXAMPLE\.TEST's, not bob's/,
      );
      // A Kerberos-only resource: bob's NTLM inside Negotiate is refused; the caller gets the 401.
      const kerberosOnly = await fetch(`${origin}/protected/`, { dispatcher: a });
      expect([kerberosOnly.status, kerberosOnly.headers.get('x-remote-user')]).toEqual([401, '']);
      await kerberosOnly.arrayBuffer();
      // With no password path at all (Kerberos only): the typed error, never a request as alice.
      const strict = agent({
        credentials: bob,
        trustedOrigins: [origin],
        negotiate: { ccache: aliceCc, mech: 'kerberos' },
      });
      const err = await fetch(`${origin}/protected/`, { dispatcher: strict }).catch((e: { cause?: Error }) => e.cause);
      expect(err).toMatchObject({ code: 'MULTILEG_KRB_OTHER_PRINCIPAL' });
      // negotiate.principal chooses that ticket on purpose.
      const chosen = agent({
        credentials: bob,
        trustedOrigins: [origin],
        negotiate: { ccache: aliceCc, principal: 'alice@EXAMPLE.TEST' },
      });
      const asAlice = await fetch(`${origin}/protected/`, { dispatcher: chosen });
      expect([asAlice.status, asAlice.headers.get('x-remote-user')]).toEqual([200, 'alice@EXAMPLE.TEST']);
      await asAlice.arrayBuffer();
    });

    it('M5/R4: a password and no ticket at a Kerberos-only location (Apache /protected): the NTLM opening inside Negotiate went alone and was refused; the report says `opening` (it said `refused`, as for a wrong password) and R4 holds nothing back, where a wrong password refused after its 2 legs at /spnego2 is `refused` and held back', async () => {
      const origin = lab.apache!.origin;
      const a = agent({ credentials: ALICE_NTLM, trustedOrigins: [origin], negotiate: { ccache: cc('none') } });
      for (let i = 0; i < 2; i++) {
        const res = await fetch(`${origin}/protected/`, { dispatcher: a });
        expect(res.status).toBe(401);
        await res.arrayBuffer();
      }
      // Both requests sent the opening (no password in it: nothing held back), each refused there.
      expect(
        a.handshakes().map((h) => [h.scheme, h.legs, h.outcome, h.failure, h.fallbackReason?.split(':')[0]]),
      ).toEqual(Array(2).fill(['Negotiate', 1, 'failed', 'opening', 'MULTILEG_KRB_NO_TICKET']));
      const wrong = agent({
        credentials: { ...ALICE_NTLM, password: 'wrong' },
        trustedOrigins: [origin],
        negotiate: { ccache: cc('none') },
      });
      for (let i = 0; i < 2; i++) {
        const res = await fetch(`${origin}/spnego2/`, { dispatcher: wrong });
        expect(res.status).toBe(401);
        await res.arrayBuffer();
      }
      // The password refused: the second request goes without it (R4), one handshake in all.
      expect(wrong.handshakes().map((h) => [h.legs, h.outcome, h.failure])).toEqual([[2, 'failed', 'refused']]);
    });

    it('M5: Apache /spnego2 offers both Negotiate and NTLM', async () => {
      const client = labClient(lab.apache!.origin, lab.apache!.ca);
      try {
        const r = await send(client, '/spnego2/');
        expect(r.status).toBe(401);
        expect(headerValues(r.headers, 'www-authenticate').flatMap((v) => v.split(/,\s*/))).toEqual([
          'Negotiate',
          'NTLM',
        ]);
      } finally {
        await client.close();
      }
    });

    for (const negotiate of [{ mech: 'kerberos' }, { ntlmFallback: false }] as const) {
      it(`M5: with ${JSON.stringify(negotiate)} the fallback is the next offered scheme, NTLM, and the report says why`, async () => {
        const origin = lab.apache!.origin;
        const a = agent({
          credentials: ALICE_NTLM,
          trustedOrigins: [origin],
          negotiate: { ...negotiate, ccache: expiredCc },
        });
        const res = await fetch(`${origin}/spnego2/`, { dispatcher: a });
        expect(res.status).toBe(200);
        expect(res.headers.get('x-remote-user')).toBe('EXAMPLE\\alice');
        expect(a.handshakes().at(-1)).toMatchObject({
          scheme: 'NTLM',
          fallbackReason: expect.stringMatching(/^MULTILEG_KRB_TICKET_EXPIRED: /),
        });
        // without a password: the typed Kerberos error, as before
        const b = agent({ negotiate: { ...negotiate, ccache: expiredCc } });
        const err = await fetch(`${origin}/spnego2/`, { dispatcher: b }).catch((e: { cause?: Error }) => e.cause);
        expect(err).toMatchObject({ code: 'MULTILEG_KRB_TICKET_EXPIRED' });
      });
    }

    it('M5: the CLI: -v says why Kerberos was skipped (never the password); --keytab authenticates as the service account', async () => {
      const cli = (args: string[]) =>
        promisify(execFile)(process.execPath, [BIN, ...args], { env: process.env }).then(
          (r) => ({ code: 0, ...r }),
          (e: { code: number; stdout: string; stderr: string }) => e,
        );
      const origin = lab.apache!.origin;
      const fb = await cli([
        '-v',
        '-u',
        'EXAMPLE\\alice:alicepw',
        '--ccache',
        cc('none'),
        '--cacert',
        lab.apache!.certFile,
        `${origin}/spnego2/`,
      ]);
      expect(fb.code).toBe(0);
      expect(fb.stderr).toMatch(
        /Negotiate handshake .* as EXAMPLE\\alice; Kerberos skipped: MULTILEG_KRB_NO_TICKET: no Kerberos ticket/,
      );
      expect(fb.stderr + fb.stdout).not.toContain('alicepw');
      const kt = await cli(['-i', '--keytab', svcKeytab, '--cacert', lab.apache!.certFile, `${origin}/protected/`]);
      expect(kt.code).toBe(0);
      expect(kt.stdout).toMatch(/^x-remote-user: svc@EXAMPLE\.TEST\r?$/m); // -i ends header lines with CRLF, as curl does
    });

    for (const c of cases) {
      it(`M5: ${c.what} with a password: authenticated via NTLM, and the report says why Kerberos was skipped`, async () => {
        const origin = c.byIp ? `https://127.0.0.1:${lab.apache!.tlsPort}` : lab.apache!.origin;
        const negotiate = { ccache: c.ccache(), ...(c.principal ? { principal: c.principal } : {}) };
        const a = agent({ credentials: ALICE_NTLM, trustedOrigins: [origin], negotiate });
        const res = await fetch(`${origin}/spnego2/`, { dispatcher: a });
        expect(res.status).toBe(200);
        expect(res.headers.get('x-remote-user')).toBe('EXAMPLE\\alice');
        const report = a.handshakes().at(-1)!;
        expect(report).toMatchObject({ scheme: 'Negotiate', identity: 'EXAMPLE\\alice' });
        expect(report.fallbackReason).toMatch(new RegExp(`^${c.code}: `));
        expect(report.fallbackReason).not.toContain('alicepw');
      });

      it(`M5: ${c.what} without a password: the typed Kerberos error (${c.code})`, async () => {
        const origin = c.byIp ? `https://127.0.0.1:${lab.apache!.tlsPort}` : lab.apache!.origin;
        const a = agent({ negotiate: { ccache: c.ccache() } });
        const err = await fetch(`${origin}/spnego2/`, { dispatcher: a }).catch((e: { cause?: Error }) => e.cause);
        expect(err).toMatchObject({ code: c.code });
      });
    }
  });
});
