import { AgentClosedError, MultilegError, ownCopy } from '../errors.ts';
import { log } from '../log.ts';
import type { MechanismSet } from '../mechanisms/registry.ts';
import type { Credentials, Holder, Mechanism } from '../mechanisms/types.ts';
import { alpnFor, type ResolvedOptions } from '../options.ts';
import { ProxyAuthenticationError } from '../proxy/errors.ts';
import type { ProxyRoute } from '../proxy/options.ts';
import { type ProbeAnswer, probeAcceptableIssuers } from './acceptable-issuers.ts';
import { siteServername } from './connector.ts';
import type { CredentialProof } from './credential-proof.ts';
import {
  DONE,
  type ExchangeEnv,
  type ExchangeOutcome,
  fastPathEligible,
  fastPathReady,
  type HandshakeReport,
  proxyHandshakeReport,
  runOnSession,
} from './exchange.ts';
import { FastExchange, type FastHost } from './fast-exchange.ts';
import type { Job } from './job.ts';
import {
  ChallengeRecords,
  callerConnectionOf,
  callerNtlmLeg,
  loadSpnego,
  NtlmUnpairedError,
  needsSpnego,
} from './ntlm-pairing.ts';
import { OriginMemory, TICKET_RECHECK_MS } from './origin-memory.ts';
import { ProvedIdentity, sameAccount } from './proved-identity.ts';
import { type Identity, type Lane, ownProxy, Session } from './session.ts';
import { type WaitConsumer, WaitQueue } from './wait-queue.ts';

/** Relocations per request: enough for "HTTP/1.1 required" plus a lost connection or two. */
const MAX_RELOCATIONS = 4;

export class RelocationLimitError extends MultilegError {
  constructor() {
    super(
      'MULTILEG_RELOCATION_LIMIT',
      `request was moved to a new connection ${MAX_RELOCATIONS} times (connections keep ending or refusing it); check the server or the network`,
    );
  }
}

/** What the pool decides a new session or an overflow by (see OriginPool.#survey). */
interface Survey {
  /** Usable sessions open. */
  open: number;
  /** One of them negotiated HTTP/1.1 on the "auto" lane. */
  http1: boolean;
  authenticated: boolean;
  /** One of them is still connecting, probing or handshaking: it will have room soon. */
  opening: boolean;
  /** Callers' sessions counted in `open` that take no new request: retiring, or reserved by CHALLENGEs (ntlm-pairing.ts). */
  reserved: number;
  leastLoaded: Session | undefined;
}

/**
 * Whether sessions of `identity` carry the agent's own credentials of `which` kind: the origin's
 * only on its own sessions; the proxy's on every session but those whose requests bring their own
 * Proxy-Authorization (anonymous requests and a caller's own Authorization still ride the agent's
 * proxy identity).
 */
const carries = (identity: Identity, which: 'origin' | 'proxy'): boolean =>
  which === 'origin' ? identity === 'agent' : !ownProxy(identity);

/** A session spreading per-request handshakes takes this many times its handshake slots (see #room). */
export const SPREAD_ROOM = 8;

/**
 * Error codes of a connection attempt that timed out: undici's connect timeout, a proxy's connect
 * timeout, a CONNECT tunnel's handshake past limits.handshakeTimeout (the tunnel is the connection:
 * each waiter's own attempt would stall as long), the OS's.
 */
const CONNECT_TIMEOUTS: ReadonlySet<string> = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'MULTILEG_PROXY_CONNECT_TIMEOUT',
  'MULTILEG_PROXY_TIMEOUT',
  'ETIMEDOUT',
]);

/** One key per (lane, identity), made once rather than per request. */
const WAIT_KEYS: Record<Lane, Record<Identity, string>> = {
  auto: {
    agent: 'auto/agent',
    anonymous: 'auto/anonymous',
    elsewhere: 'auto/elsewhere',
    caller: 'auto/caller',
    'caller-bound': 'auto/caller-bound',
    'caller-proxy': 'auto/caller-proxy',
    'caller-proxy-bound': 'auto/caller-proxy-bound',
    'caller-both': 'auto/caller-both',
  },
  http1: {
    agent: 'http1/agent',
    anonymous: 'http1/anonymous',
    elsewhere: 'http1/elsewhere',
    caller: 'http1/caller',
    'caller-bound': 'http1/caller-bound',
    'caller-proxy': 'http1/caller-proxy',
    'caller-proxy-bound': 'http1/caller-proxy-bound',
    'caller-both': 'http1/caller-both',
  },
};

/**
 * The agent's key for the pool of `origin` dialled for `site`, the origin as the caller named it:
 * behind undici's `dns` interceptor `origin` holds the address it resolved and `site` the name, and
 * each name at an address has a pool of its own (S1): its sessions (TLS checked against that name),
 * the client certificate its selector chose for it, its protection spaces and schemes are that
 * site's, not every name's served from the address (a CDN, a shared front end). The proof of the
 * credentials is the name's, shared by its addresses (R4).
 */
export function poolKey(origin: string, site: string): string {
  return site === origin ? origin : `${origin} ${site}`;
}

/**
 * The sessions of one origin: an HTTP/2-capable lane (normally one multiplexed session) and an
 * HTTP/1.1 lane (several connections, each bound to its handshake, H1). It knows what the agent
 * learnt about the origin and moves requests between sessions when one ends or refuses them.
 */
export class OriginPool implements FastHost, WaitConsumer<Session, Job> {
  readonly origin: string;
  readonly memory: OriginMemory;
  readonly #sessions: Session[] = [];
  /** Requests waiting for a session with room, per lane and identity (R1: bounded like every wait). */
  readonly #waiting = new Map<string, { lane: Lane; identity: Identity; queue: WaitQueue<Session> }>();
  readonly #surveyed: Survey = {
    open: 0,
    http1: false,
    authenticated: false,
    opening: false,
    reserved: 0,
    leastLoaded: undefined,
  };
  /** Callers' NTLM CHALLENGEs waiting for their AUTHENTICATE (ntlm-pairing.ts): a session freed by one pumps. */
  readonly #challenges: ChallengeRecords;
  /**
   * Open while undefined; then closed by close() (running requests finish, new ones fail) or by
   * destroy(err) (everything fails with err). Terminal.
   */
  #end: { readonly kind: 'closed' } | { readonly kind: 'destroyed'; readonly error: Error } | undefined;
  /** Ends the acceptable-issuers probes still running when the pool is destroyed (T3, R1; close() lets the requests waiting for one finish). */
  #probing: AbortController | undefined;
  readonly #options: ResolvedOptions;
  /** Mutable only for {@link credentialsChanged}: exchanges read it by reference. */
  readonly #env: { -readonly [K in keyof ExchangeEnv]: ExchangeEnv[K] };
  /** Called once for every request given to {@link run}, when it has ended (never throws). */
  readonly #ended: () => void;
  /** Through a proxy (H5), decided once for the origin. */
  readonly #route: ProxyRoute | undefined;
  /** Stops listening to the proxy's proof ({@link forget}). */
  readonly #unlisten: (() => void) | undefined;
  /**
   * The TLS server name its requests name where the origin holds an address undici's dns interceptor
   * resolved a name to: the name (an early connection is checked under it, S1).
   */
  readonly #servername: string | undefined;

  /** The proxy this origin's connections go through, fixed when the pool is made (NO_PROXY may change later). */
  get route(): ProxyRoute | undefined {
    return this.#route;
  }
  #sessionsCreated = 0;
  /** The accounts the newest-admitted handshakes proved at the origin and at its proxy (S6). */
  readonly #originProved = new ProvedIdentity();
  /** The version of the proxy's record (shared by the agent's pools) this pool has followed (#followProxy). */
  #proxySeen = 0;
  /** A session is authenticated by credentials that may change outside the agent: see #checkHolders. */
  #watchHolders = false;
  #holdersCheckedUntil = 0;

  constructor(
    origin: string,
    options: ResolvedOptions,
    mechanisms: MechanismSet,
    report: (r: HandshakeReport) => void,
    ended: () => void,
    succeededAs?: (held: Holder) => void,
    credentials: () => Credentials | undefined = () => undefined,
    /**
     * The name `origin` is (or, its address, undici's dns interceptor resolved) and that name's proof
     * of the credentials if one was made yet (R4: its addresses share it); the refusal memory keeps
     * the credentials under the name (another run may dial another address first).
     */
    named?: { readonly name: string; readonly proof: CredentialProof | undefined },
  ) {
    this.origin = origin;
    this.#ended = ended;
    this.#options = options;
    const memory = options.refusalMemory;
    this.memory = new OriginMemory(
      options.http1MemoryTtl,
      // (The proof's errors name where the credentials are tried: the name its addresses share.)
      named?.name ?? origin,
      memory && {
        memory,
        place: () => {
          const c = credentials();
          return c?.password ? { origin: named?.name ?? origin, proxy: false, credentials: c } : undefined;
        },
      },
      named?.proof,
    );
    this.#servername = named ? siteServername(origin, named.name) : undefined;
    // A certificate given as such goes in the TLS handshake, where servers ask for one (T3); a
    // selector is asked when a Transport challenge comes.
    this.memory.clientCertificate = options.handshakeCertificate;
    this.#challenges = new ChallengeRecords(options.limits, () => this.#pump());
    this.#route = options.proxy.route(origin, named?.name);
    if (this.#route) log.pool('%s via %s proxy %s', origin, this.#route.kind, this.#route.proxy.origin);
    // R1/R4: a recall of the refusal memory for the proxy credentials begins to wait (a forwarded
    // request's, or a CONNECT's): nothing goes on that connection meanwhile, and the requests waiting
    // here for a connection wait for the recall's outcome instead (#watchWaiting): proved, they ride
    // the authenticated connection, as without a memory; the recall given up, each goes to the proxy
    // once without the credentials. That move alone, not a pump: told synchronously by whichever
    // pool's request began the recall, it calls into no session, proof or caller (no re-entrancy).
    this.#unlisten = this.#route?.proxy.proof.onRecall(() => this.#watchWaiting());
    this.#env = {
      memory: this.memory,
      mechanisms,
      limits: options.limits,
      deliver401: options.deliver401,
      pairing: this.#challenges,
      ...(options.clientCertificate ? { selectCertificate: options.clientCertificate } : {}),
      ...(options.askAcceptableIssuers ? { askAcceptableIssuers: true } : {}),
      certificateRequest: () => this.certificateRequest(),
      // A probe that ends after destroy() (aborted by it) asks no selector of the caller's.
      destroyed: () => (this.#end?.kind === 'destroyed' ? ownCopy(this.#end.error) : undefined),
      report,
      identityProved: (session, identity, scheme, admitted) =>
        this.#identityProved(session, identity, scheme, admitted),
      // S6: an identity from credentials outside the agent (a ccache), told whoever keeps the cookie jar.
      ...(succeededAs
        ? {
            succeededAs: (identity: string, scheme: string) => {
              const mechanism = this.#env.mechanisms.get(scheme);
              if (mechanism?.holdsCredentials) succeededAs({ mechanism, identity });
            },
          }
        : {}),
    };
  }

  /**
   * What the server's TLS handshake says of client certificates (T3): whether it asks for one and
   * its acceptable CAs, for the caller's selector and to confirm that a refused connection was a
   * demand for one. One probe per origin, made as this pool's sessions connect (its proxy route,
   * `connectTo`, the agent's TLS options), its answer kept in the origin's memory unless it could
   * not tell. The origin's upgrades ask it too.
   */
  certificateRequest(): Promise<ProbeAnswer> {
    const kept = this.memory.certificateRequest;
    if (kept) return kept;
    this.#probing ??= new AbortController();
    const asking = probeAcceptableIssuers({
      origin: this.origin,
      tls: this.#options.connect,
      alpn: alpnFor(!this.#options.http1Only),
      route: this.#route,
      connectTo: this.#options.connectTo,
      limits: this.#options.limits,
      ...(this.#servername ? { servername: this.#servername } : {}),
      signal: this.#probing.signal,
    }).then((answer) => {
      // Could not tell (no handshake in time, a failed one): the next asks again.
      if (!answer.told && this.memory.certificateRequest === asking) this.memory.certificateRequest = undefined;
      return answer;
    });
    this.memory.certificateRequest = asking;
    return asking;
  }

  /**
   * A session authenticated as `identity` (S6): the agent's sessions authenticated as someone else
   * retire, as after setCredentials. Ambient Kerberos follows the default ccache, which a
   * `kdestroy; kinit bob` switches under a running process: new sessions are bob's, and alice's
   * kept-alive ones would otherwise go on serving the agent's requests as alice for as long as the
   * server keeps them open. The same account spelled by another mechanism (Kerberos after NTLM
   * inside Negotiate) is no switch. A handshake that got leave to send credentials (`admitted`)
   * before the one that proved another account carried the old credentials and merely ended later
   * (a slow server, a setCredentials or a kinit meanwhile): its session retires instead.
   */
  #identityProved(session: Session, identity: string, scheme: string, admitted: number): void {
    if (session.identity !== 'agent') return;
    if (this.#env.mechanisms.get(scheme)?.holdsCredentials) this.#watchHolders = true;
    this.#proved(session, this.#originProved, identity, admitted, authenticatedAs, 'the origin');
  }

  /**
   * `session`'s proxy connection is held as {@link Session.proxyHolder}'s identity (S6): the sessions
   * whose proxy connection is held as another account retire, as #identityProved does for the
   * origin's, so that after a `kinit bob` no request keeps going to the proxy as alice once bob is
   * proved there — whatever the backend (the `kerberos` addon cannot be asked whether a ccache
   * changed). In the same order: a CONNECT or forwarded handshake admitted before the one that
   * proved another account there (a slow proxy) retires its own session, not the newer one's. One
   * whose credentials can change outside the agent is watched from now on.
   */
  #proxyIdentityProved(session: Session): void {
    const holder = session.proxyHolder;
    if (!holder || session.closed) return;
    if (holder.mechanism.holdsCredentials) this.#watchHolders = true;
    const proved = this.#route?.proxy.proved;
    if (!proved) return;
    this.#proved(session, proved, holder.identity, holder.admitted, proxyHeldAs, 'the proxy');
    this.#proxySeen = proved.version;
  }

  /**
   * The proxy's record is shared by the agent's pools: once another pool's handshake proved another
   * account there (a later-admitted one), this pool's sessions held there as someone else retire
   * before the next request picks one (S6). A version compare per request on a proxied pool.
   */
  #followProxy(proved: ProvedIdentity): void {
    this.#proxySeen = proved.version;
    const identity = proved.identity;
    if (identity !== undefined) this.#retireOthers(undefined, identity, proxyHeldAs, 'the proxy');
  }

  /**
   * `session` was proved `identity` at `where` by a handshake admitted `admitted`-th: the newest
   * retires the sessions `identityOf` says are held there as another account; one older than the
   * newest of another account retires its own session (S6).
   */
  #proved(
    session: Session,
    proved: ProvedIdentity,
    identity: string,
    admitted: number,
    identityOf: (s: Session) => string | undefined,
    where: string,
  ): void {
    const standing = proved.place(identity, admitted);
    if (standing === 'stale') {
      session.apply({ type: 'closed' });
      log.pool(
        '%s: %s authenticated to %s as an older identity than the last proved: it retires',
        this.origin,
        session.id,
        where,
      );
    } else if (standing === 'newest') this.#retireOthers(session, identity, identityOf, where);
  }

  /** Retires the open sessions but `kept` that `identityOf` says are held as another account than `identity` (S6). */
  #retireOthers(
    kept: Session | undefined,
    identity: string,
    identityOf: (s: Session) => string | undefined,
    where: string,
  ): void {
    const retired = this.#retireWhere((s) => {
      const other = s === kept ? undefined : identityOf(s);
      return other !== undefined && !sameAccount(other, identity);
    });
    if (retired > 0) log.pool('%s: %s now holds another identity: %d session(s) retire', this.origin, where, retired);
  }

  /**
   * A session that never handshakes again cannot notice the switch above: while one is authenticated
   * by credentials from outside the agent (Kerberos' ccache), each request asks at most once every
   * TICKET_RECHECK_MS whether they still belong to its identity, and its sessions retire once they
   * do not (S6): after a `kdestroy; kinit bob` the next request authenticates as bob; after a
   * `kdestroy` alone it gets the mechanism's error (no ticket), never alice's session. The same
   * holds for the identity a session's proxy connection was authenticated as (a forwarding proxy's
   * connection, a CONNECT tunnel: the proxy's own Negotiate mechanism answers), whatever the origin
   * asked. Each pool asks for its own sessions, on its own clock: the proxy is shared by the
   * agent's pools, and nothing one pool learns here is kept where another would skip its own.
   */
  #checkHolders(): void {
    const now = Date.now();
    if (now < this.#holdersCheckedUntil) return;
    this.#holdersCheckedUntil = now + TICKET_RECHECK_MS;
    let watched = false;
    // Each mechanism asked once a pass for each identity (origin and proxy mechanisms may differ).
    const answers = new Map<Mechanism, Map<string, boolean | undefined>>();
    const gone = (held: Holder | undefined): boolean => {
      if (!held?.mechanism.holdsCredentials) return false;
      watched = true;
      let byIdentity = answers.get(held.mechanism);
      if (!byIdentity) {
        byIdentity = new Map();
        answers.set(held.mechanism, byIdentity);
      }
      if (!byIdentity.has(held.identity)) byIdentity.set(held.identity, askHolds(held.mechanism, held.identity));
      return byIdentity.get(held.identity) === false;
    };
    const retired = this.#retireWhere((s) => gone(s.proxyHolder) || gone(this.#originHolder(s)));
    this.#watchHolders = watched;
    if (retired > 0) log.pool('%s: the credentials of %d session(s) are gone; they retire', this.origin, retired);
  }

  /** Who `s` is authenticated as at the origin, and by which of the agent's mechanisms (S6). */
  #originHolder(s: Session): Holder | undefined {
    const state = s.state;
    if (s.identity !== 'agent' || state.kind !== 'authenticated' || state.identity === undefined) return undefined;
    const mechanism = this.#env.mechanisms.get(state.scheme);
    return mechanism && { mechanism, identity: state.identity };
  }

  /** @internal FastHost: the environment of this origin's exchanges (read by reference). */
  get env(): ExchangeEnv {
    return this.#env;
  }

  get sessionsCreated(): number {
    return this.#sessionsCreated;
  }

  get sessions(): readonly Session[] {
    return this.#sessions;
  }

  /** Nothing open and nothing waiting: the agent may drop this pool. */
  get idle(): boolean {
    // (A closed session still finishing a response, or requests waiting while no session is open,
    // last only until the next pump: the sweep test meets neither.)
    if (this.#sessions.some((s) => !s.closed || s.inflight > 0)) return false;
    for (const w of this.#waiting.values()) if (w.queue.length > 0) return false;
    return true;
  }

  /**
   * A stream body of a request of `identity` dispatched now is unlikely to be needed twice: it
   * would go bare on an authenticated session (the fast path), or to an origin that has not
   * challenged the agent's requests (and no scheme is remembered for it).
   */
  streamsNow(identity: Identity, http1Only: boolean): boolean {
    if (this.#end || identity !== 'agent') return false;
    if (this.memory.unchallenged && this.memory.scheme === undefined) return true;
    if (http1Only || this.#options.http1Only) return false;
    const session = this.#pick('auto', identity);
    return session !== undefined && fastPathReady(session, this.#env);
  }

  /**
   * Runs a request to its end, relocating it between sessions as needed; calls the pool's `ended`
   * once it has ended (never throws). A request that finds an authenticated session takes the fast
   * path.
   */
  run(job: Job): void {
    if (callerBound(job.identity)) {
      // The first caller's own Negotiate credential: SPNEGO's decoders first (ntlm-pairing.ts).
      if (needsSpnego(job.headers)) {
        loadSpnego().then(
          () => this.run(job),
          (err: Error) => this.#fail(job, err),
        );
        return;
      }
      const caller = callerConnectionOf(job.dispatchOptions);
      // A leg of a caller's own NTLM login to the forwarding proxy pairs as the origin's does (H1):
      // the proxy answers it first, and its connection is what the login authenticates (review r74).
      // (A tunnel refuses a caller's own Proxy-Authorization; without a proxy it is the origin's to ignore.)
      const forwarded = this.#route?.kind === 'forward' && ownProxy(job.identity);
      const proxyAuthorization = forwarded ? job.headers['proxy-authorization'] : undefined;
      const atProxy =
        proxyAuthorization === undefined ? undefined : callerNtlmLeg({ authorization: proxyAuthorization }, caller);
      const atOrigin = callerNtlmLeg(job.headers, caller);
      // S6/H1: the proxy leg decides the connection (its CHALLENGE's, or any for its NEGOTIATE), so an
      // origin AUTHENTICATE beside it could not go where its own CHALLENGE came from: sent nowhere.
      if (atProxy !== undefined && atOrigin?.kind === 'continuation') {
        log.pool('%s job %d: origin AUTHENTICATE beside a proxy NTLM leg: not sent', this.origin, job.id);
        this.#fail(job, new NtlmUnpairedError(this.origin, 'proxy-leg'));
        return;
      }
      job.ntlmAtProxy = atProxy !== undefined;
      job.ntlm = atProxy ?? atOrigin;
      job.originOpening = atOrigin?.kind === 'opening';
    }
    this.#next(job);
  }

  /**
   * A caller's own NTLM AUTHENTICATE goes to the session whose CHALLENGE it answers, retiring or
   * not and whatever CHALLENGEs it holds (its own first leg counted one of them), or nowhere: with
   * none to pair it with, or once that session ended under it (a relocation), it fails typed
   * (ntlm-pairing.ts). True when it was dealt with.
   */
  #paired(job: Job): boolean {
    if (job.ntlm?.kind !== 'continuation') return false;
    if (job.paired) {
      // Its connection ended before it was answered: the server context went with it.
      this.#challenges.settle(job.paired);
      this.#fail(job, new NtlmUnpairedError(this.#unpairedAt(job), 'connection-gone'));
      return true;
    }
    const record = this.#challenges.take(job.ntlm);
    if (typeof record === 'string') {
      log.pool('%s job %d: AUTHENTICATE not paired (%s): not sent', this.origin, job.id, record);
      // R4: many misses may be a client guessing other clients' pairing keys (docs/SECURITY.md).
      if (record === 'no-record' && this.#challenges.missed())
        log.pool(
          "%s: many AUTHENTICATEs paired with no CHALLENGE lately: a client may be guessing others' pairing keys (give callerConnection, docs/GATEWAYS.md)",
          this.origin,
        );
      this.#fail(job, new NtlmUnpairedError(this.#unpairedAt(job), record));
      return true;
    }
    job.paired = record;
    const session = record.session as Session;
    log.pool('%s job %d: AUTHENTICATE paired with its CHALLENGE on %s', this.origin, job.id, session.id);
    session.acquire();
    this.#steps(session, job);
    return true;
  }

  /** Where an unpaired AUTHENTICATE was bound for: the origin, or (its own Proxy-Authorization's) the proxy. */
  #unpairedAt(job: Job): string | { proxy: string } {
    const proxy = job.ntlmAtProxy ? this.#route?.proxy.origin : undefined;
    return proxy === undefined ? this.origin : { proxy };
  }

  #lane(job: Job): Lane {
    return job.http1Only || this.#options.http1Only || this.memory.requiresHttp1 ? 'http1' : 'auto';
  }

  /**
   * The request's next session: one with room now, or a place in the lane's queue (the queue calls
   * {@link granted} or {@link refused}). A request handed an authenticated session goes on the fast
   * path at once: no promise, closure or async frame of the pool's per request (most of a burst,
   * also past the session's streams: its Client queues it).
   */
  #next(job: Job): void {
    // Closed between relocations: only destroy() closes a pool with requests still running (close()
    // waits for them), and it fails them first, so no test reaches this; it keeps a late
    // relocation from opening a connection.
    if (this.#end) {
      this.#fail(job, new AgentClosedError());
      return;
    }
    if (this.#watchHolders) this.#checkHolders();
    // R1/R4: withheld, and the proxy's answer to that bare CONNECT is known already: it is this one's.
    const answer = job.proxyWatch === 'withheld' && carries(job.identity, 'proxy') ? this.#withheldAnswer : undefined;
    if (answer) {
      this.#fail(job, ownCopy(answer));
      return;
    }
    const proved = this.#route?.proxy.proved;
    if (proved && proved.version !== this.#proxySeen) this.#followProxy(proved);
    if (job.ntlm !== undefined && this.#paired(job)) return;
    const lane = this.#lane(job);
    let session: Session | undefined;
    try {
      session = this.#take(lane, job.identity);
    } catch (err) {
      this.#fail(job, err as Error);
      return;
    }
    if (!session) {
      if (this.#watchProxy(job)) return;
      const queue = this.#queueOf(lane, job.identity);
      queue.enqueue(job, this);
      this.#relieve(lane, job.identity, queue.length);
    }
    // Handed an authenticated session: straight to the fast path, no steps.
    else if (fastPathEligible(session, job, this.#env)) new FastExchange(session, job, this).start();
    else {
      this.#given(session, job);
      this.#steps(session, job);
    }
  }

  /**
   * `job` was given `session` for its steps (or, from the queue, for either path). A request whose
   * wait for the proxy credentials' recall ended with it given up (#watchProxy) has a tunnel not yet
   * made go without them (R1/R4). A caller's NEGOTIATE is counted with its CHALLENGEs at once (the
   * next request the pump hands out sees it), until it leaves the session (#after; its CHALLENGE
   * counts by then).
   */
  #given(session: Session, job: Job): void {
    if (job.proxyWatch === 'withheld') session.withholdProxyCredentials();
    if (job.ntlm?.kind !== 'opening') return;
    session.openingSent();
    job.openingOn = session;
  }

  /** @internal WaitConsumer: the lane's queue hands the request `session` (acquired). */
  granted(job: Job, session: Session): void {
    this.#given(session, job);
    if (fastPathEligible(session, job, this.#env)) {
      new FastExchange(session, job, this).start();
      return;
    }
    // The steps start a microtask later, as when the pool awaited its queue (the sessions #pump
    // hands out are all taken before any of them runs).
    queueMicrotask(() => this.#steps(session, job));
  }

  /** @internal WaitConsumer: the wait ended without a session (full, timed out, aborted, destroyed; R1). */
  refused(job: Job, err: Error): void {
    // A microtask later, as when the pool awaited its queue: not inside the caller's abort().
    queueMicrotask(() => this.#fail(job, err));
  }

  /**
   * R1/R4: a request that would wait here for a session while a recall of the refusal memory for the
   * proxy credentials waits (a session's first request, before its handshake with the proxy sends
   * the password: CredentialProof.onRecall) waits for that recall's outcome instead, once
   * (CredentialProof.watch) — no session gets further than the proxy's gate before it, and this
   * wait, begun after the recall, ends after its bound, where the pool's, begun before it, ran out
   * first (QueueTimeoutError). Then it comes back here as any request does: proved, it rides the
   * authenticated proxy connection, or opens more as without a memory; held back, it meets the
   * refusal; the recall given up, it goes to the proxy once without the credentials
   * (`proxyWatch` withheld: not asking again), its 407 the answer. True when it waits there.
   */
  #watchProxy(job: Job): boolean {
    const proof = this.#route?.proxy.proof;
    if (!proof || !this.#waitsOnProxyRecall(job)) return false;
    job.proxyWatch = 'watched';
    log.pool("%s job %d: waits for the proxy credentials' recall", this.origin, job.id);
    proof.watch(job, this.#options.limits).then(
      (watched) => {
        if (watched === 'withheld') job.proxyWatch = 'withheld';
        this.#next(job);
      },
      (err: Error) => this.#fail(job, err),
    );
    return true;
  }

  #fail(job: Job, err: Error): void {
    job.sink.fail(err);
    this.#ended();
  }

  /** The steps on `session`, then what their outcome says: the request is over, or moves on. */
  #steps(session: Session, job: Job): void {
    let outcome: Promise<ExchangeOutcome>;
    try {
      outcome = runOnSession(session, job, this.#env);
    } catch (err) {
      outcome = Promise.reject(err);
    }
    outcome.then(
      (o) => this.#after(session, job, o),
      (err: Error) => {
        // A bug, not a network condition: the caller still gets an error, never a hang.
        job.sink.fail(err);
        this.#after(session, job, DONE);
      },
    );
  }

  #after(session: Session, job: Job, outcome: ExchangeOutcome): void {
    // S6: a caller's connection-bound request that ended with no answer read (aborted, timed out, reset
    // after the server took it) may have logged the session in all the same: it takes no one else's
    // (review r56: bob's aborted login left the session his, and Mallory's next request was served as
    // bob). Only an answer read tells (callerAnswered). So may a caller's own connection-bound
    // Proxy-Authorization at a forwarding proxy (review r72: Mallory went through the proxy as bob).
    if (this.#mayBind(job) && !job.sink.responseStarted && !session.closed) session.retire();
    // An AUTHENTICATE answered (or failed) there: its CHALLENGE is forgotten, and a retiring session may close.
    if (job.paired && outcome.kind !== 'relocate') this.#challenges.settle(job.paired);
    if (job.openingOn === session) {
      job.openingOn = undefined;
      session.openingEnded();
    }
    if (!this.#settle(session, job, outcome)) this.#next(job);
    else if (outcome.kind !== 'fast') this.#ended();
  }

  /**
   * Whether the caller's own credentials `job` carries may authenticate the connection (S6): its
   * `Authorization` on the callers' bound lane, or its own `Proxy-Authorization` of a scheme that
   * binds the connection, at a forwarding proxy.
   */
  #mayBind(job: Job): boolean {
    if (callerBound(job.identity)) return true;
    return ownProxy(job.identity) && this.#env.mechanisms.bindsConnection(job.headers['proxy-authorization']);
  }

  /** @internal FastHost: a fast-path request ended, or its steps reached `outcome`. */
  fastEnded(exchange: FastExchange, outcome: ExchangeOutcome | undefined): void {
    const { session, job } = exchange;
    if (outcome === undefined) {
      session.release();
      this.#ended();
    } else this.#after(session, job, outcome);
  }

  /**
   * Frees the session (once the response ended) or hands it to the fast path; true when the
   * request is over here, false to relocate it.
   */
  #settle(session: Session, job: Job, outcome: ExchangeOutcome): boolean {
    if (outcome.kind === 'fast') {
      // The session stays acquired: the FastExchange releases it.
      new FastExchange(session, job, this).start();
      return true;
    }
    if (outcome.kind === 'done') {
      // As `finally` (done never rejects), without its two closures and promise.
      const release = () => session.release();
      outcome.done.then(release, release);
      return true;
    }
    session.release();
    log.pool('%s job %d relocates from %s: %s', this.origin, job.id, session.id, outcome.reason);
    if (outcome.reason === 'misdirected') session.apply({ type: 'closed' });
    if (outcome.reason === 'http1') this.memory.rememberHttp1();
    job.relocations += 1;
    if (job.relocations > MAX_RELOCATIONS) {
      job.sink.fail(new RelocationLimitError());
      return true;
    }
    return false;
  }

  /**
   * Sessions the lane may have open. An "auto" session that negotiated HTTP/1.1 serves one request
   * at a time: allow more of them. Session mode, once a session is authenticated (the credentials
   * work and the scheme is known): when every session is at its stream room, another may open, up
   * to maxAuthenticatedSessions, and authenticate proactively (exchange `check`), at one handshake
   * per extra session.
   */
  #maxSessions(lane: Lane, identity: Identity, survey: Survey): number {
    if (lane === 'http1' || survey.http1) {
      // Until the credentials are proved here, one HTTP/1.1 connection (and so one handshake) at a
      // time: a wrong password is tried once per burst, not once per connection (account lockout).
      // Not while a recall of the refusal memory waits (R1/R4): the requests started with it go on
      // to connections of their own and wait there for its outcome (CredentialProof.watch: begun
      // after the recall, their bound ends after its own), which keeps the password to one try;
      // held here, their wait ran out before the recall's (QueueTimeoutError).
      const proving =
        identity === 'agent' && this.memory.unproven && !this.memory.credentialsRefused && !this.memory.proof.recalling;
      return proving ? 1 : this.#options.maxHttp1Connections;
    }
    if (this.#spreads(identity)) return this.#options.limits.maxPerRequestSessions;
    // Callers' own connection-bound requests: a session carries one at a time (#room) and retires on
    // a final answer (S6), so one session at a time would run them one after another, a connection
    // each (review r52: 211 of 300 timed out in the queue). They open connections in parallel, as
    // many as HTTP/1.1 would, where each carries one request too (review r54: 8 sessions of one
    // handshake each failed slow clients under load).
    if (callerBound(identity)) return this.#options.maxHttp1Connections;
    const more = identity === 'agent' && this.memory.mode === 'session' && survey.authenticated;
    return more ? this.#options.limits.maxAuthenticatedSessions : 1;
  }

  /**
   * One pass over the sessions a request of `lane` and `identity` may use (no array, no closure),
   * into one object reused by every survey (read at once by #take; most of a burst surveys twice).
   */
  #survey(lane: Lane, identity: Identity): Survey {
    const survey = this.#surveyed;
    survey.open = 0;
    survey.http1 = false;
    survey.authenticated = false;
    survey.opening = false;
    survey.reserved = 0;
    survey.leastLoaded = undefined;
    for (const s of this.#sessions) {
      if (!this.#usable(s, lane, identity)) continue;
      survey.open += 1;
      if (this.#reserved(s)) {
        survey.reserved += 1;
        continue;
      }
      if (s.protocol === 'http/1.1') survey.http1 = true;
      if (s.state.kind === 'authenticated') survey.authenticated = true;
      if (s.capacity !== Number.POSITIVE_INFINITY || s.state.kind === 'handshaking') survey.opening = true;
      if (!survey.leastLoaded || s.inflight < survey.leastLoaded.inflight) survey.leastLoaded = s;
    }
    return survey;
  }

  /**
   * Each request runs its own multi-leg handshake here (per-request mode): at most
   * maxConcurrentHandshakes at once per session (servers cap incomplete contexts per session, draft
   * §3.1, so one session's cap is not raised), and the requests spread over more sessions.
   */
  #spreads(identity: Identity): boolean {
    return identity === 'agent' && this.memory.multilegPerRequest;
  }

  /**
   * Requests a session takes at once: a spread session SPREAD_ROOM times its handshake slots
   * (enough waiting for a slot to keep them all busy; the rest wait here or go to another session),
   * and so does a session running the origin's first handshake; any other session of the agent's,
   * as many as its streams (the rest wait here for a stream or another session or, when neither can
   * come, go into the least loaded session's queue: #take).
   */
  #room(s: Session): number {
    const capacity = s.capacity;
    // One caller's request at a time (S6): while another caller's connection-bound request is on
    // it, a login there (session-mode NTLM authenticates the whole session) would serve that request
    // as this caller, or its answer retire the session under this caller's handshake (review r54).
    if (callerBound(s.identity)) return Math.min(capacity, 1);
    if (s.lane !== 'auto' || s.identity !== 'agent') return capacity;
    const spreadRoom = SPREAD_ROOM * this.#options.limits.maxConcurrentHandshakes;
    if (this.#spreads(s.identity)) return Math.min(capacity, spreadRoom);
    // The origin's first handshake may turn out per-request: until it ends, no more than a spread
    // session's room, so a burst does not pile up behind one session's handshake slots.
    const streams = this.#options.maxConcurrentStreams;
    const firstHandshake = this.memory.mode === undefined && s.state.kind === 'handshaking';
    return Math.min(capacity, firstHandshake ? Math.min(streams, spreadRoom) : streams);
  }

  /**
   * Sessions that may carry new requests: the lane's, of the request's identity (S6), and with the
   * certificate once one is in use (T3).
   */
  #usable(s: Session, lane: Lane, identity: Identity): boolean {
    return (
      s.lane === lane &&
      s.identity === identity &&
      !s.closed &&
      s.certificate === (identity === 'agent' ? this.memory.clientCertificate : undefined)
    );
  }

  /**
   * A callers' session that takes no new request (S6, R4): retiring (a caller's answer there may
   * have authenticated it), or carrying a caller's handshake — its NEGOTIATE on the wire, or its
   * CHALLENGE waiting for the AUTHENTICATE. One caller's handshake at a time, on HTTP/2 as on
   * HTTP/1.1: on HTTP/1.1 another NEGOTIATE would replace the connection's context; on HTTP/2 (session
   * mode authenticates the whole session) one caller's login would make the session that caller's
   * while another's handshake still waited there, and that one's AUTHENTICATE — whatever it holds —
   * would be served as the first (review r53). The handshakes spread over sessions instead (up to
   * maxHttp1Connections, #maxSessions; each session one request at a time, #room).
   */
  #reserved(s: Session): boolean {
    return s.retiring || s.challengesPending > 0;
  }

  #pick(lane: Lane, identity: Identity): Session | undefined {
    let best: Session | undefined;
    let bestScore = -1;
    for (const s of this.#sessions) {
      if (!this.#usable(s, lane, identity) || this.#reserved(s) || s.inflight >= this.#room(s)) continue;
      // Prefer a connection that is already authenticated: it needs no handshake (H1).
      const score = s.state.kind === 'authenticated' ? 2 : s.state.kind === 'per-request' ? 1 : 0;
      if (score > bestScore) {
        best = s;
        bestScore = score;
      }
    }
    return best;
  }

  /** Where requests of `lane` and `identity` wait for a session with room, bounded like every wait (R1). */
  #queueOf(lane: Lane, identity: Identity): WaitQueue<Session> {
    const key = WAIT_KEYS[lane][identity];
    let waiting = this.#waiting.get(key);
    if (!waiting) {
      const what = `a connection to ${this.origin} (a new session's first response, or a free HTTP/1.1 connection)`;
      waiting = { lane, identity, queue: new WaitQueue<Session>(this.#options.limits, what) };
      this.#waiting.set(key, waiting);
    }
    return waiting.queue;
  }

  /** A session with room for one more request, creating one if the lane allows; marks it used. */
  #take(lane: Lane, identity: Identity): Session | undefined {
    let session = this.#pick(lane, identity);
    if (!session) {
      const survey = this.#survey(lane, identity);
      if (survey.open < this.#maxSessions(lane, identity, survey)) session = this.#create(lane, identity);
      // Every session is at its room and no more may open: the least loaded one takes the request
      // into its Client's own queue, as one undici session would, unless a session is still opening
      // (connecting, handshaking) or handshakes spread: then the request waits here for room.
      else if (survey.opening || this.#spreads(identity) || callerBound(identity) || !survey.leastLoaded)
        session = undefined;
      else session = survey.leastLoaded;
      // The reused survey holds no session past its use (a closed one could not be collected).
      survey.leastLoaded = undefined;
      if (!session) return undefined;
    }
    session.acquire();
    return session;
  }

  #create(lane: Lane, identity: Identity): Session {
    // Only the agent's own sessions present its client certificate: it is a credential too.
    const certificate = identity === 'agent' ? this.memory.clientCertificate : undefined;
    const session = new Session({
      origin: this.origin,
      lane,
      identity,
      tls: certificate ? { ...this.#options.connect, ...certificate } : this.#options.connect,
      ...(this.#options.connectTo ? { connectTo: this.#options.connectTo } : {}),
      ...(this.#servername ? { servername: this.#servername } : {}),
      ...(certificate ? { certificate } : {}),
      keepAliveTimeout: this.#options.keepAliveTimeout,
      headersTimeout: this.#options.headersTimeout,
      bodyTimeout: this.#options.bodyTimeout,
      maxConcurrentStreams: this.#options.maxConcurrentStreams,
      limits: this.#options.limits,
      // S6: the jar is the agent's (its login's session cookie among them): not for requests that
      // bring their own credentials, which neither get its cookies nor add theirs to it.
      ...(this.#options.cookies && (identity === 'agent' || identity === 'anonymous')
        ? { cookies: this.#options.cookies }
        : {}),
      ...(this.memory.contextCap !== undefined ? { handshakeCap: this.memory.contextCap } : {}),
      onChange: () => this.#pump(),
      onConnectFailed: (failed, err) => this.#connectFailed(failed, err),
      onHttp1Required: () => this.memory.rememberHttp1(),
      // R4: whether a leg the origin (or a forwarding proxy) closed under unanswered may go again.
      originProof: this.memory.proof,
      ...(this.#route
        ? {
            route: this.#route,
            onRemoteHttp1: () => this.memory.rememberHttp1(),
            // S6: a proxy connection held as another account retires the others, and is watched.
            onProxyHolder: (session) => this.#proxyIdentityProved(session),
            // H5: reported as an origin's handshake is (the agent's onHandshake, the channel, stats).
            onProxyHandshake: (session, h) => this.#env.report(proxyHandshakeReport(session.id, h)),
          }
        : {}),
    });
    this.#sessionsCreated += 1;
    this.#sessions.push(session);
    log.pool('%s new session %s (%s, %s)', this.origin, session.id, lane, identity);
    return session;
  }

  /**
   * A connection attempt that timed out (the peer, or the proxy before it, accepts and never
   * answers: a blackholed address) fails the requests waiting for a connection to this origin with
   * its error, as undici's Client fails its queue: otherwise each would wait for an attempt of its
   * own, one after another (R1: the 6th of a burst waited 60 s for QueueTimeoutError, not 10 s).
   * Not while another session of the origin is connected, and not for a fast failure (refused,
   * DNS): the next waiter's own attempt costs little there and may succeed.
   */
  #connectFailed(failed: Session, err: Error): void {
    if (failed.proxyCredentialsWithheld && err instanceof ProxyAuthenticationError) {
      // Kept on the proxy's proof (all the agent's pools share it) for withheld requests still to
      // come: through a tunnel only, where it is read (#withheldAnswer; a forwarded request's 407 is
      // its own, and only a tunnel's CONNECT fails a connection with it).
      if (this.#route?.kind === 'tunnel') this.#route.proxy.proof.keepWithheldAnswer(err);
      this.#answerWithheld(err);
    }
    if (!CONNECT_TIMEOUTS.has((err as { code?: unknown }).code as string)) return;
    if (this.#sessions.some((s) => s !== failed && !s.closed && s.connection !== undefined)) return;
    log.pool('%s connection timed out (%s): failing the requests waiting for one', this.origin, err.message);
    // Each its own copy (same class, code and message): one caller's annotations stay its own.
    for (const { queue } of this.#waiting.values()) queue.settleAll(undefined, () => ownCopy(err));
  }

  /**
   * R1/R4: a tunnel whose CONNECT went without the proxy credentials (the refusal memory's recall
   * given up at queueTimeout: Job.proxyWatch `withheld`) got the proxy's 407, `err` (or it is known
   * already: {@link #withheldAnswer}). The withheld requests waiting here for a connection end with
   * it at once, each its own copy, rather than each open a tunnel in turn in a fresh pool wait (20–50
   * of them one after another ran past queueTimeout: QueueTimeoutError). That is their answer too:
   * each would send the same bare CONNECT (nothing of the credentials; the memory not asked again
   * for it) to the same proxy. A withheld request of any recall given up is such a request.
   */
  #answerWithheld(err: Error): void {
    for (const { identity, queue } of this.#waiting.values()) {
      if (queue.length === 0 || !carries(identity, 'proxy')) continue;
      const answered = queue.take((j) => j.proxyWatch === 'withheld');
      if (answered.length > 0)
        log.pool(
          "%s %d requests the proxy's credentials were withheld for: its 407 answers them",
          this.origin,
          answered.length,
        );
      for (const job of answered) this.#fail(job, ownCopy(err));
    }
  }

  /**
   * R1/R4: the proxy's answer to a withheld bare CONNECT, once known (CredentialProof.withheldAnswer:
   * this pool's, or another's through the same proxy), for a pool that tunnels; undefined while none
   * is known (or it was forgotten). A withheld request reaching the pool, or still waiting in it,
   * gets it, its own copy, rather than one more bare CONNECT to the proxy.
   */
  get #withheldAnswer(): Error | undefined {
    return this.#route?.kind === 'tunnel' ? this.#route.proxy.proof.withheldAnswer : undefined;
  }

  /**
   * R1/R4: while a recall of the refusal memory for the proxy credentials waits, the requests
   * already waiting here for a session wait for its outcome instead (#watchProxy). Calls into no
   * session, proof (but its watch) or caller: the proof's onRecall runs it synchronously.
   */
  #watchWaiting(): void {
    if (this.#end || !this.#route?.proxy.proof.recalling) return;
    for (const { queue } of this.#waiting.values())
      if (queue.length > 0) for (const job of queue.take((j) => this.#waitsOnProxyRecall(j))) this.#watchProxy(job);
  }

  /**
   * R1/R4: whether `job`, waiting for a session (or about to), waits for the proxy credentials'
   * recall instead (#watchProxy): one is waiting now, `job` has not waited for one (once at most),
   * and it goes with the agent's proxy credentials. The one test of both #watchProxy and
   * #watchWaiting: a request #watchWaiting left in the queue would wait past its bound, begun
   * before the recall's; one it took that #watchProxy refused would be lost from the queue.
   */
  #waitsOnProxyRecall(job: Job): boolean {
    return (
      this.#route?.proxy.proof.recalling === true && job.proxyWatch === 'unwatched' && carries(job.identity, 'proxy')
    );
  }

  /** Hands freed capacity to waiting requests, in arrival order per lane and identity. */
  #pump(): void {
    for (let i = this.#sessions.length - 1; i >= 0; i--) {
      const s = this.#sessions[i]!;
      if (s.closed && s.inflight === 0) this.#sessions.splice(i, 1);
    }
    if (this.#end) return;
    // R1/R4: withheld requests waiting here meet the proxy's answer already known.
    const answer = this.#withheldAnswer;
    if (answer) this.#answerWithheld(answer);
    this.#watchWaiting();
    for (const { lane, identity, queue } of this.#waiting.values()) {
      // H2: requests that waited for an "auto" session go on HTTP/1.1 once the origin asked for it
      // (GOAWAY HTTP_1_1_REQUIRED): not on a new HTTP/2 session that meets the same refusal.
      const to = lane === 'auto' && this.memory.requiresHttp1 ? 'http1' : lane;
      while (queue.length > 0) {
        const s = this.#take(to, identity);
        if (!s) break;
        // A waiter that went away meanwhile gives the place back. (Not reached: `length` counts only
        // live waiters, and nothing between the check and the shift can settle one.)
        if (!queue.shift(s)) s.release();
      }
      if (queue.length > 0) this.#relieve(to, identity, queue.length);
    }
  }

  /**
   * R1: `waiting` callers' requests wait for a session of `lane` and `identity`, every open one is
   * kept from them by callers' pending CHALLENGEs (or retiring), and no more may open: CHALLENGEs
   * left unanswered past a short grace (abandoned NEGOTIATEs) are given up, so that no client that
   * sends only a NEGOTIATE holds the gateway's pass-through for limits.handshakeTimeout
   * (ntlm-pairing.ts, `ChallengeRecords.relieve`; it pumps again when it freed some, or later).
   */
  #relieve(lane: Lane, identity: Identity, waiting: number): void {
    if (!callerBound(identity)) return;
    if (this.#challenges.size === 0) return;
    const survey = this.#survey(lane, identity);
    const starved = survey.reserved === survey.open && survey.open >= this.#maxSessions(lane, identity, survey);
    survey.leastLoaded = undefined;
    if (!starved) return;
    const freed = this.#challenges.relieve(waiting, (s) => this.#usable(s as Session, lane, identity));
    if (freed > 0) {
      log.pool(
        '%s %d pending CHALLENGE(s) given up: %d request(s) wait for their sessions',
        this.origin,
        freed,
        waiting,
      );
      this.#pump();
    }
  }

  /**
   * The agent's credentials were replaced (`origin`: its own, `proxy`: the proxy's, when this
   * origin's connections go through a proxy): handshakes from now on use `mechanisms`, the proof
   * starts over (R4), and every session that carries the old identity retires (S6) — its requests
   * already on the wire finish there, those waiting on it move to new sessions, and a request
   * undici has not written yet is refused by `Session.checkStart` and moves too. Returns how many
   * sessions retired. Fail safe: they retire even when only the password changed, as the server
   * may bind the session to the old one. `jarReplaced`: the cookie jar changed too, which anonymous
   * sessions were given as well: they retire, so that none asks or tells the old jar again.
   */
  credentialsChanged(which: 'origin' | 'proxy', mechanisms?: MechanismSet, jarReplaced = false): number {
    if (which === 'origin') {
      if (mechanisms) this.#env.mechanisms = mechanisms;
      this.memory.credentialsChanged();
    } else if (!this.#route) return 0;
    const retired = this.#retireWhere((s) => carries(s.identity, which) || (jarReplaced && s.identity === 'anonymous'));
    if (retired > 0) log.pool('%s credentials replaced: %d session(s) retire', this.origin, retired);
    return retired;
  }

  /**
   * The agent stopped using its cookie jar (S6): the sessions given it (the agent's and anonymous
   * ones) retire, so none asks or tells it again; returns how many.
   */
  jarDropped(): number {
    return this.#retireWhere((s) => s.cookies !== undefined);
  }

  /** Retires the open sessions `which` picks (they take no new request; those on them finish); returns how many. */
  #retireWhere(which: (s: Session) => boolean): number {
    let retired = 0;
    for (const s of [...this.#sessions]) {
      if (s.closed || !which(s)) continue;
      s.apply({ type: 'closed' });
      retired += 1;
    }
    return retired;
  }

  /**
   * Dropped by the agent while idle (nothing waiting, no connection): it no longer listens to the
   * proxy's proof, which outlives it.
   */
  forget(): void {
    this.#unlisten?.();
  }

  async close(): Promise<void> {
    this.#end ??= { kind: 'closed' };
    this.#unlisten?.();
    this.#challenges.dispose();
    await Promise.all(this.#sessions.map((s) => s.close()));
  }

  async destroy(err: Error): Promise<void> {
    if (this.#end?.kind !== 'destroyed') this.#end = { kind: 'destroyed', error: err };
    this.#unlisten?.();
    this.#probing?.abort(err);
    // (Shared by a name's addresses: the first of their pools ends it.)
    this.memory.proof.end(err);
    this.#challenges.dispose();
    for (const { queue } of this.#waiting.values()) queue.settleAll(undefined, err);
    await Promise.all(this.#sessions.map((s) => s.destroy(err)));
  }
}

/** The identity `s`'s proxy connection is held as, if any. */
const proxyHeldAs = (s: Session): string | undefined => s.proxyHolder?.identity;

/** The identity `s` is authenticated as at the origin, when it is the agent's and authenticated. */
function authenticatedAs(s: Session): string | undefined {
  const state = s.state;
  return s.identity === 'agent' && state.kind === 'authenticated' ? state.identity : undefined;
}

/**
 * `mechanism.holdsCredentials(identity)`, a throw being "cannot tell" (a mechanism of the caller's
 * own may throw; the request that happened to ask must not fail for it, nor a relocation lose it).
 */
export function askHolds(mechanism: Mechanism, identity: string): boolean | undefined {
  try {
    return mechanism.holdsCredentials?.(identity);
  } catch (err) {
    log.pool('%s holdsCredentials threw (%s): taken as cannot tell', mechanism.scheme, (err as Error)?.name);
    return undefined;
  }
}

/**
 * Callers' own connection-bound requests (S6, H1): one at a time per session, each caller's alone —
 * at the origin, and at a forwarding proxy (`caller-proxy-bound`, review r74: over HTTP/2 bob's NTLM
 * login there let Mallory's request in flight beside it through as bob; over HTTP/1.1 his
 * AUTHENTICATE went on whichever connection was free, not the one that had his NEGOTIATE).
 */
function callerBound(identity: Identity): boolean {
  return identity === 'caller-bound' || identity === 'caller-proxy-bound' || identity === 'caller-both';
}
