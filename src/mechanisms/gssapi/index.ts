/**
 * A Kerberos/SPNEGO initiator over the system GSS-API (see ./ffi.ts) with what the `kerberos` addon cannot
 * do: TLS channel bindings (`input_chan_bindings`, RFC 4121 §4.1.1.2 / RFC 5929) and a per-client
 * credential store (`gss_acquire_cred_from`: a ccache, or a client keytab that gets and renews tickets
 * itself), so two agents in one process can be two principals without touching process.env.
 * Calls that may wait on the network (a KDC, DNS) run on koffi's workers; calls that cannot run on the
 * event loop, which is cheaper (see docs/ARCHITECTURE.md, "Blocking").
 */

import { statSync } from 'node:fs';
import { isIP } from 'node:net';
import {
  callAsync,
  GSS_C_INDEFINITE,
  GSS_C_INITIATE,
  GSS_S_CONTINUE_NEEDED,
  GssCallAbandonedError,
  type GssCallState,
  type GssFunctions,
  type GssHandle,
  type GssOid,
  isGssError,
  loadGssFunctions,
  MECH_KRB5,
  MECH_SPNEGO,
  NT_HOSTBASED_SERVICE,
  NT_USER_NAME,
  type OutBuffer,
  statusText,
  takeBuffer,
} from './ffi.ts';
import {
  type CacheCopy,
  cacheHolds,
  copyFileCache,
  destroyCacheCopy,
  dropServiceTicket,
  type NameLookupProfile,
  nameLookupProfile,
  type TicketCache,
} from './krb5.ts';

export {
  GSS_WORKER_CALLS,
  GssapiUnavailableError,
  GssCallAbandonedError,
  type GssCallState,
  gssCallsPending,
  gssLibraryName,
  loadGssFunctions,
} from './ffi.ts';

/** `GSS_C_CHANNEL_BOUND_FLAG` (gssapi_ext.h): set by an acceptor that verified the bindings. */
export const GSS_C_CHANNEL_BOUND_FLAG = 0x800;

export interface GssClientOptions {
  /** `spnego` (Kerberos inside SPNEGO, the only mech offered) or raw `kerberos`. */
  readonly mech: 'spnego' | 'kerberos';
  /** GSS request flags (MUTUAL, SEQUENCE, DELEG...). */
  readonly flags: number;
  /** Client principal (`user@REALM`) to take credentials for. */
  readonly principal?: string;
  /** Credential cache (`FILE:/path`, `DIR:`, `KEYRING:`, `MEMORY:`) for this client only. */
  readonly ccache?: string;
  /** Client keytab (`FILE:/path`) to get tickets from; they go to `ccache`. */
  readonly keytab?: string;
  /** `tls-server-end-point` hash of the server certificate (RFC 5929); bound into the Kerberos authenticator. */
  readonly channelBinding?: Buffer;
  /** Where this client's owner keeps an acquired credential for its next contexts (see {@link CredCache}). */
  readonly credCache?: CredCache;
  /**
   * Whether this context's caller has given up (its handshake's deadline passed, its request was
   * aborted): a call still queued for a worker is then not started (see ffi.ts callAsync). A context
   * made ahead takes its request's when handed out (review r46: it kept the previous request's,
   * which had given up, so its AP-REP check was dropped).
   */
  readonly gaveUp?: () => boolean;
  /** Told where this context's GSS-API calls on workers are (see ffi.ts callAsync); rebound as `gaveUp` is. */
  readonly onCall?: (state: GssCallState) => void;
}

/** How long an acquired credential serves new contexts: a burst acquires once, a later kinit is seen soon. */
export const CRED_REUSE_MS = 5_000;

/**
 * How often a kept credential's cache is asked whether it still holds the credential's principal
 * (a `kdestroy; kinit bob` under a running process: S6): contexts made after the switch is seen are
 * bob's, not alice's from the kept handle. One cache read (~25 µs) a second, not one per context.
 */
export const HOLDER_RECHECK_MS = 1_000;

/**
 * A first `gss_init_sec_context` runs on the event loop (no thread hop) only when its service ticket
 * is known to be in the ccache for at least this long: a ticket about to expire means a TGS-REQ.
 */
export const SYNC_TICKET_MARGIN_MS = 60_000;
/**
 * A first step with its ticket in the ccache that took this long waited on something (a TGT
 * renewal, a slow local resolver the profile let us take for none: see {@link targetMayWaitOnDns}):
 * on a worker, it keeps the SPN off the event loop until one is quicker; on the event loop, for
 * good (one stall at most per agent and SPN).
 */
export const SLOW_SYNC_CALL_MS = 20;
/**
 * A first step this soon after the previous one (a stream of per-request handshakes) has the next
 * context's first step made ahead, on a koffi worker while the request waits for its server.
 */
export const AHEAD_WINDOW_MS = 1_000;
/** How long a context made ahead waits for its request before it is thrown away unused. */
export const AHEAD_MAX_AGE_MS = 2_000;

/** A krb5 profile boolean as MIT reads it (`profile_parse_boolean`); `fallback` when it is neither. */
function profileBoolean(value: string | undefined, fallback: boolean): boolean {
  const v = value?.toLowerCase();
  if (v === undefined) return fallback;
  if (['y', 'yes', 'true', 't', '1', 'on'].includes(v)) return true;
  if (['n', 'no', 'false', 'nil', '0', 'off'].includes(v)) return false;
  return fallback;
}

/**
 * Whether making the Kerberos name of `spn` (`service@host`) may wait on DNS, under this krb5
 * profile (undefined: it could not be read — another GSS-API, whose defaults canonicalise too).
 * MIT's mechglue imports a host-based target name into the mechanism in every
 * `gss_init_sec_context` call, later steps included, and `krb5_sname_to_principal` then looks the
 * host up (`getaddrinfo`, and `getnameinfo` when `rdns`) unless `dns_canonicalize_hostname` is
 * false; `fallback` looks it up when the first name finds no ticket; an IP address is not looked
 * up, only reversed (rdns); `dns_lookup_realm` may ask DNS for the host's realm. Such steps must not
 * run on the event loop: a silent DNS server stalls them for resolv.conf's timeouts.
 */
export function targetMayWaitOnDns(spn: string, profile: NameLookupProfile | undefined): boolean {
  if (!profile) return true;
  if (profileBoolean(profile.dnsLookupRealm, false)) return true;
  const canonicalize = profile.dnsCanonicalizeHostname?.toLowerCase();
  if (canonicalize === 'fallback') return true;
  if (!profileBoolean(canonicalize, true)) return false;
  const at = spn.indexOf('@');
  const host = at < 0 ? '' : spn.slice(at + 1);
  return !(isIP(host) !== 0 && !profileBoolean(profile.rdns, true));
}

/** An acquired credential held by the contexts using it and by its cache; freed when the last lets go. */
interface SharedCred {
  readonly handle: GssHandle;
  readonly username: string;
  holders: number;
  /**
   * SPN → until when (ms) its service ticket is in the credential's ccache, as a context on this
   * credential learnt it (`time_rec`): later first steps for that SPN can then run synchronously.
   * Never filled for a keytab credential (MIT may renew its TGT inside `gss_init_sec_context`).
   */
  readonly tickets?: Map<string, number>;
  /** The MEMORY copy it was acquired from, if it was (see CredCache's #adoptCopy). */
  readonly copy?: Copy;
}

/**
 * A CredCache's MEMORY copy of its FILE ccache ({@link copyFileCache}), and the file as it was when
 * copied: any change to it (a kinit, a kdestroy, a ticket another process stored) retires the copy.
 */
interface Copy extends CacheCopy {
  /** Credentials acquired from it and not released yet. */
  users: number;
  /** No longer used for new credentials: destroyed once the last user lets go. */
  retired: boolean;
  /** Its place in the order copies were made, process-wide (see {@link gssCacheCopies}). */
  readonly serial: number;
}

/** The file's identity, size and modification time (ns), or undefined when it is gone. */
function fileStamp(path: string): string | undefined {
  const st = statSync(path, { bigint: true, throwIfNoEntry: false });
  return st && `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** MEMORY copies made and not destroyed yet, process-wide, by serial. */
const liveCopies = new Set<number>();
/** MEMORY copies made so far, process-wide: the next one's serial. */
let copiesMade = 0;

/**
 * How many MEMORY ccache copies exist (for tests and diagnostics): each is destroyed once retired and
 * unused. `since` (a {@link gssCacheCopiesMade} read earlier): only those made since then, so that
 * one test's count is not moved by an earlier test's copy ending meanwhile (its stream's idle end).
 */
export function gssCacheCopies(since = 0): number {
  let n = 0;
  for (const serial of liveCopies) if (serial >= since) n += 1;
  return n;
}

/** How many MEMORY ccache copies have been made so far: a mark for {@link gssCacheCopies}. */
export const gssCacheCopiesMade = (): number => copiesMade;

function destroyCopy(g: GssFunctions, copy: Copy): void {
  liveCopies.delete(copy.serial);
  destroyCacheCopy(g, copy.name);
}

function retire(g: GssFunctions, copy: Copy): void {
  copy.retired = true;
  if (copy.users === 0) destroyCopy(g, copy);
}

/** A credential acquired from `copy` is released. */
function unuse(g: GssFunctions, copy: Copy): void {
  copy.users -= 1;
  if (copy.retired && copy.users === 0) destroyCopy(g, copy);
}

function letGo(g: GssFunctions, shared: SharedCred): void {
  shared.holders -= 1;
  if (shared.holders > 0) return;
  g.releaseCred([0], [shared.handle]);
  if (shared.copy) unuse(g, shared.copy);
}

/** What a CredCache holds, apart from the cache itself (so that its finalizer can free it). */
interface CredSlot {
  g?: GssFunctions;
  shared?: SharedCred;
  /** The copy new credentials are acquired from while its file stays as it was. */
  copy?: Copy;
  until: number;
}

const credCaches = new FinalizationRegistry<CredSlot>((slot) => {
  if (slot.g && slot.shared) letGo(slot.g, slot.shared);
  if (slot.g && slot.copy) retire(slot.g, slot.copy);
});

/**
 * One acquired initiator credential, kept for {@link CRED_REUSE_MS} by its owner (one per agent's
 * Negotiate mechanism, never shared between agents): per-request Kerberos then costs one
 * `gss_acquire_cred_from` (a ccache read, or an AS-REQ with a keytab) per burst, not per request.
 * A context whose GSS-API call fails drops it, so a stale credential is not tried again.
 */
export class CredCache {
  readonly #slot: CredSlot = { until: 0 };
  /** A context whose first step was made ahead (not in the slot: the finalizer must not hold it). */
  #ahead: Ahead | undefined;
  #making = false;
  #lastFirst = Number.NEGATIVE_INFINITY;
  /** Until when the kept credential's cache is known to hold its principal (see {@link recheck}). */
  #heldUntil = 0;
  /** The ccache could not be copied (see #adoptCopy): its credentials come from it as they are. */
  #noCopy = false;
  /** SPN → whether a first step with its ticket cached was seen to be quick (`fast`) or to block. */
  readonly #speed = new Map<string, 'fast' | 'slow'>();
  /** Retires the copy once its stream has ended (see {@link #watchStream}). */
  #streamWatch: ReturnType<typeof setTimeout> | undefined;

  constructor() {
    credCaches.register(this, this.#slot, this);
  }

  /** Holders of the kept credential (the cache and the contexts still using it); 0 when none is kept. */
  get holders(): number {
    return this.#slot.shared?.holders ?? 0;
  }

  /** The kept credential, one more holder on it; undefined when there is none or it is too old. */
  take(now: number): SharedCred | undefined {
    const slot = this.#slot;
    if (!slot.shared || now >= slot.until) {
      this.#release();
      return undefined;
    }
    slot.shared.holders += 1;
    return slot.shared;
  }

  /** Keeps `shared` for CRED_REUSE_MS, or `lifetimeMs` if that is shorter. */
  keep(g: GssFunctions, shared: SharedCred, now: number, lifetimeMs: number): void {
    this.#release();
    shared.holders += 1;
    Object.assign(this.#slot, { g, shared, until: now + Math.min(CRED_REUSE_MS, lifetimeMs) });
    this.#heldUntil = now + HOLDER_RECHECK_MS;
  }

  /**
   * Drops the kept credential, and a context made ahead on it, once its cache no longer holds its
   * principal's tickets (S6): the handle would go on making that principal's tokens. Asks at most
   * once every HOLDER_RECHECK_MS; never for a keytab credential (it is the keytab's principal's).
   */
  recheck(now: number, g: GssFunctions, o: GssClientOptions): void {
    // A copy's file changed (a kinit, a kdestroy, a ticket stored): at once, one stat a context.
    this.currentCopy();
    const shared = this.#slot.shared;
    if (!shared || now < this.#heldUntil || o.keytab) return;
    this.#heldUntil = now + HOLDER_RECHECK_MS;
    if (cacheHolds(g, cacheOf(o, shared.username)) === false) this.drop();
  }

  /** Drops the kept credential if it is `username`'s: their tickets left the cache (a kdestroy, a kinit as another). */
  forget(username: string): void {
    if (this.#slot.shared?.username === username) this.drop();
  }

  /** Drops the kept credential, a context made ahead, and the copy they came from (the next are acquired from the ccache). */
  drop(): void {
    this.#release();
    const slot = this.#slot;
    if (slot.g && slot.copy) retire(slot.g, slot.copy);
    slot.copy = undefined;
  }

  /** Lets go of the kept credential and a context made ahead; the copy stays for the next credential. */
  #release(): void {
    const slot = this.#slot;
    if (slot.g && slot.shared) letGo(slot.g, slot.shared);
    slot.shared = undefined;
    this.#ahead?.client.dispose();
    this.#ahead = undefined;
  }

  /** The copy a new credential is acquired from (see #adoptCopy); undefined when none or its file changed. */
  currentCopy(): Copy | undefined {
    const copy = this.#slot.copy;
    if (copy && fileStamp(copy.path) !== copy.stamp) this.drop();
    return this.#slot.copy;
  }

  /**
   * Moves the kept credential, acquired from a FILE ccache, onto a MEMORY copy of that file (in a
   * stream of first steps, before the next is made ahead): MIT reads a FILE ccache whole, under a
   * lock, several times in every `gss_init_sec_context`, the copy in place (docs/PERFORMANCE.md).
   * New credentials come from the copy (acquired on a worker) while the file stays as it was; any
   * change to it retires the copy at the next context (recheck), so a kinit or kdestroy is seen at
   * once (S6). Tickets GSS-API gets meanwhile go to the copy alone. Not for a keytab credential,
   * nor a cache that is no file (a keyring, KCM, a DIR collection's).
   */
  async #adoptCopy(o: GssClientOptions): Promise<void> {
    const { g, shared } = this.#slot;
    if (!g || !shared?.tickets || shared.copy || o.keytab || this.#noCopy) return;
    const made = copyFileCache(g, cacheOf(o, shared.username), fileStamp);
    // Not a FILE ccache (a keyring, KCM): not asked again at every first step (KCM: a socket round
    // trip). A FILE one that could not be copied now (another principal's, being rewritten by a
    // kinit) is asked again at the stream's next first step: not given up for good.
    if (made === 'not-file') {
      this.#noCopy = true;
      return;
    }
    if (made === 'not-held') {
      // It now holds another principal's tickets, or none (a kinit or kdestroy since the credential
      // was kept): not one more context on it, made ahead here next (S6), as the recheck would, later.
      this.drop();
      return;
    }
    if (made === undefined) return;
    const serial = copiesMade++;
    liveCopies.add(serial);
    // Its user while the acquire runs: the credential acquired, once kept.
    const copy: Copy = { ...made, users: 1, retired: false, serial };
    const held = await acquireFromCopy(g, o, copy.name);
    // Meanwhile the kept credential may have gone (dropped, expired) or the file changed: not adopted then.
    if (
      !held ||
      held.username !== shared.username ||
      held.lifetime <= 1 ||
      this.#slot.shared !== shared ||
      fileStamp(copy.path) !== copy.stamp
    ) {
      if (held) g.releaseCred([0], [held.cred]);
      retire(g, copy);
      unuse(g, copy);
      return;
    }
    if (this.#slot.copy) retire(g, this.#slot.copy);
    const next = { handle: held.cred, username: held.username, holders: 0, tickets: new Map(shared.tickets), copy };
    this.keep(g, next, Date.now(), (held.lifetime - 1) * 1000);
    this.#slot.copy = copy;
    this.#watchStream();
  }

  /**
   * The copy lives no longer than its stream: once no first step came for CRED_REUSE_MS, it is
   * retired (destroyed once unused). Else its tickets stayed in this process's memory for as long as
   * the agent was idle, or closed and not yet collected — after a `kdestroy` too, until a next
   * context looked at the file. The timer holds the cache weakly (its finalizer still runs).
   */
  #watchStream(): void {
    if (this.#streamWatch) return;
    const cache = new WeakRef(this);
    this.#streamWatch = setTimeout(() => {
      const self = cache.deref();
      if (!self) return;
      self.#streamWatch = undefined;
      if (!self.#slot.copy) return;
      if (Date.now() - self.#lastFirst >= CRED_REUSE_MS) self.drop();
      else self.#watchStream();
    }, CRED_REUSE_MS).unref();
  }

  /** Whether first steps for `spn` with its ticket cached were seen to be quick (never blocked). */
  isFast(spn: string): boolean {
    return this.#speed.get(spn) === 'fast';
  }

  /** What a first step with its ticket cached took (`onLoop`: it ran on the event loop). */
  noteTicketedStep(spn: string, ms: number, onLoop: boolean): void {
    if (ms >= SLOW_SYNC_CALL_MS) {
      if (onLoop) this.#speed.set(spn, 'slow');
    } else if (!this.#speed.has(spn)) {
      this.#speed.set(spn, 'fast');
    }
  }

  /** Whether new credentials come from a MEMORY copy of the ccache (see #adoptCopy). */
  get copied(): boolean {
    return this.#slot.copy !== undefined;
  }

  /** Whether a context made ahead is waiting. */
  get ahead(): boolean {
    return this.#ahead !== undefined;
  }

  /** The context made ahead for `spn` and these options, when there is a fresh one (taken: used once). */
  takeAhead(spn: string, o: GssClientOptions, now: number): GssClient | undefined {
    const a = this.#ahead;
    if (!a) return undefined;
    this.#ahead = undefined;
    if (now - a.made < AHEAD_MAX_AGE_MS && a.spn === spn && sameRequest(a.o, o)) return a.client;
    a.client.dispose();
    return undefined;
  }

  /** A caller got a first token: in a stream of them, the next context is made now, off the event loop. */
  firstTokenTaken(spn: string, o: GssClientOptions, now: number): void {
    const stream = now - this.#lastFirst < AHEAD_WINDOW_MS;
    this.#lastFirst = now;
    if (!stream || this.#ahead || this.#making || !this.#slot.shared) return;
    this.#making = true;
    // After the current request has been written.
    setImmediate(() => {
      this.#adoptCopy(o)
        .catch(() => {}) // the kept credential stays as it is
        .then(() => GssClient.create(spn, o, { keptOnly: true }))
        .then((client) => {
          if (!client) return;
          client.stepAhead();
          this.#ahead?.client.dispose();
          const ahead: Ahead = { spn, o, client, made: Date.now() };
          this.#ahead = ahead;
          // Not kept past its use-by time when no request comes (e.g. the stream has ended).
          setTimeout(() => {
            if (this.#ahead !== ahead) return;
            this.#ahead = undefined;
            client.dispose();
          }, AHEAD_MAX_AGE_MS).unref();
        })
        .catch(() => {}) // the next request makes its own context and reports what fails
        .finally(() => {
          this.#making = false;
        });
    });
  }
}

interface Ahead {
  readonly spn: string;
  readonly o: GssClientOptions;
  readonly client: GssClient;
  readonly made: number;
}

/** Whether a context made for `a` serves `b` (same agent's mechanism: only these can differ). */
function sameRequest(a: GssClientOptions, b: GssClientOptions): boolean {
  return (
    a.mech === b.mech &&
    a.flags === b.flags &&
    (a.channelBinding === b.channelBinding ||
      (a.channelBinding !== undefined && b.channelBinding !== undefined && a.channelBinding.equals(b.channelBinding)))
  );
}

/** A failed GSS-API call: the display text of major and minor status (names, never keys or tokens). */
export class GssCallError extends Error {
  readonly major: number;
  readonly minor: number;
  /** The client principal, when credentials were acquired. */
  readonly clientPrincipal?: string;
  /** The service principal in Kerberos form (`HTTP/host@REALM`), when GSS-API could say. */
  readonly servicePrincipal?: string;
  constructor(
    call: string,
    major: number,
    minor: number,
    text: string,
    names: { client?: string; service?: string } = {},
  ) {
    // MIT keeps the detailed text (which principal was not found) per thread, and the call ran on a
    // koffi worker: the names are added here instead.
    const who = [names.client && `client ${names.client}`, names.service && `service ${names.service}`].filter(Boolean);
    super(`${call}: ${text}${who.length ? ` (${who.join(', ')})` : ''}`);
    this.name = 'GssCallError';
    this.major = major;
    this.minor = minor;
    if (names.client) this.clientPrincipal = names.client;
    if (names.service) this.servicePrincipal = names.service;
  }
}

interface Handles {
  name?: GssHandle;
  target?: GssHandle;
  cred?: GssHandle;
  /** `cred` belongs to a CredCache: let go of it instead of releasing it. */
  shared?: SharedCred;
  ctx: [GssHandle];
  /** Counted in {@link handshakesInFlight} (a request stepped it) until released. */
  inFlight?: boolean;
}

/**
 * Contexts a request has stepped and that have not ended yet (complete, failed, disposed — each
 * handshake disposes its context at its end, whatever the end — or collected). More than one:
 * other requests' handshakes are in flight, and the event loop has their work to do.
 */
let handshakesInFlight = 0;

/** How many contexts a request has stepped and that have not ended (for tests and diagnostics). */
export const gssHandshakesInFlight = (): number => handshakesInFlight;

function release(g: GssFunctions, h: Handles): void {
  if (h.inFlight) {
    h.inFlight = false;
    handshakesInFlight -= 1;
  }
  if (h.ctx[0]) g.deleteSecContext([0], h.ctx, null);
  if (h.shared) letGo(g, h.shared);
  else if (h.cred) g.releaseCred([0], [h.cred]);
  h.shared = undefined;
  if (h.target) g.releaseName([0], [h.target]);
  if (h.name) g.releaseName([0], [h.name]);
  h.ctx[0] = null;
  h.cred = undefined;
  h.target = undefined;
  h.name = undefined;
}

/** A context abandoned mid-handshake (the server never sent its last token) still frees its GSS handles. */
const registry = new FinalizationRegistry<{ g: GssFunctions; h: Handles }>(({ g, h }) => release(g, h));

function importName(g: GssFunctions, text: string, type: GssOid): GssHandle {
  const bytes = Buffer.from(text, 'utf8');
  const minor = [0];
  const out: [GssHandle] = [null];
  const major = g.importName(minor, { length: bytes.length, value: bytes }, type, out) as number;
  if (isGssError(major)) {
    throw new GssCallError('gss_import_name', major, minor[0]!, statusText(g, major, minor[0]!, null));
  }
  return out[0];
}

/**
 * One initiator security context. `step` takes and returns base64 (like the `kerberos` addon's client, so
 * the Negotiate mechanism drives either the same way).
 */
export class GssClient {
  readonly #g: GssFunctions;
  readonly #h: Handles;
  readonly #mech: GssOid;
  readonly #flags: number;
  readonly #bindings: object | null;
  readonly #credCache: CredCache | undefined;
  readonly #o: GssClientOptions;
  readonly #spn: string;
  /** Making the target's Kerberos name may wait on DNS (see {@link targetMayWaitOnDns}): every step on a worker. */
  readonly #nameMayWait: boolean;
  #complete = false;
  #retFlags = 0;
  #lastCall: 'sync' | 'async' | 'ahead' | undefined;
  /** The first step, made ahead of the request (see {@link CredCache.firstTokenTaken}). */
  #ahead: Promise<string | null> | undefined;
  /** The call running on a koffi worker (or queued for one), if one is. */
  #busy: Promise<number> | undefined;
  /** Thrown away (its handles go once a call on a worker is over). */
  #disposed = false;
  /** Whether its caller gave up (see {@link GssClientOptions.gaveUp}): the request it now serves. */
  #gaveUp: (() => boolean) | undefined;
  /** Its caller's {@link GssClientOptions.onCall}: the request it now serves. */
  #onCall: ((state: GssCallState) => void) | undefined;
  readonly username: string;
  /** Made on the credential its CredCache kept from an earlier context, not one acquired for it. */
  readonly keptCredential: boolean;

  private constructor(
    g: GssFunctions,
    h: Handles,
    o: GssClientOptions,
    username: string,
    spn: string,
    keptCredential = false,
  ) {
    this.keptCredential = keptCredential;
    this.#g = g;
    this.#h = h;
    this.#spn = spn;
    this.#nameMayWait = targetMayWaitOnDns(spn, nameLookupProfile(g));
    this.#mech = o.mech === 'kerberos' ? MECH_KRB5 : MECH_SPNEGO;
    this.#flags = o.flags;
    this.#credCache = o.credCache;
    this.#o = o;
    this.#gaveUp = o.gaveUp;
    this.#onCall = o.onCall;
    this.username = username;
    // Both address types 0 and empty (they are part of the checksum): only the application data binds.
    const data = o.channelBinding
      ? Buffer.concat([Buffer.from('tls-server-end-point:', 'latin1'), o.channelBinding])
      : undefined;
    const empty = { length: 0, value: null };
    this.#bindings = data
      ? {
          initiator_addrtype: 0,
          initiator_address: empty,
          acceptor_addrtype: 0,
          acceptor_address: empty,
          application_data: { length: data.length, value: data },
        }
      : null;
    registry.register(this, { g, h }, this);
  }

  /**
   * Acquires credentials (from `ccache` / `keytab`, or the default cache) and prepares a context for
   * `spn` — or hands out the one its cache made ahead. `keptOnly`: only on a credential the cache keeps.
   */
  static async create(spn: string, o: GssClientOptions): Promise<GssClient>;
  static async create(spn: string, o: GssClientOptions, only: { keptOnly: true }): Promise<GssClient | undefined>;
  static async create(spn: string, o: GssClientOptions, only?: { keptOnly: true }): Promise<GssClient | undefined> {
    const g = await loadGssFunctions();
    const now = Date.now();
    o.credCache?.recheck(now, g, o);
    const ahead = only ? undefined : o.credCache?.takeAhead(spn, o, now);
    if (ahead) {
      // Made for a request still to come: this one's.
      ahead.#gaveUp = o.gaveUp;
      ahead.#onCall = o.onCall;
      return ahead;
    }
    const h: Handles = { ctx: [null] };
    try {
      const kept = o.credCache?.take(now);
      if (!kept && only) return undefined;
      if (kept) {
        h.shared = kept;
        h.cred = kept.handle;
      }
      h.target = importName(g, spn, NT_HOSTBASED_SERVICE);
      if (o.principal) h.name = importName(g, o.principal, NT_USER_NAME);
      if (kept) return new GssClient(g, h, o, kept.username, spn, true);
      // The copy of the ccache the credential cache keeps in a stream, while its file is unchanged.
      // Held from here (not destroyed if retired meanwhile); a credential from it is shared even when
      // not kept, so that the copy is destroyed only once its users let go.
      const copy = o.keytab ? undefined : o.credCache?.currentCopy();
      if (copy) copy.users += 1;
      const minor = [0];
      const cred: [GssHandle] = [null];
      let major: number;
      try {
        // A keytab acquire may send an AS-REQ to the KDC: off the event loop.
        major = await callAsync(
          g.acquireCredFrom,
          acquireArgs(o, h.name, copy?.name ?? o.ccache, cred, minor),
          only ? undefined : o.gaveUp,
          only ? undefined : o.onCall,
        );
        if (isGssError(major)) {
          throw new GssCallError('gss_acquire_cred_from', major, minor[0]!, statusText(g, major, minor[0]!, MECH_KRB5));
        }
      } catch (e) {
        if (copy) {
          unuse(g, copy);
          // The next context acquires from the ccache itself — unless the call never started (its
          // caller gave up while it queued), which says nothing of the copy.
          if (!copy.retired && !(e instanceof GssCallAbandonedError)) o.credCache?.drop();
        }
        throw e;
      }
      h.cred = cred[0];
      const { name: username, lifetime } = inquireCredential(g, h.cred);
      // Kept no longer than its tickets last (a keytab credential is then acquired anew, with a new ticket).
      if (o.credCache && (lifetime > 1 || copy)) {
        h.shared = {
          handle: h.cred,
          username,
          holders: 1,
          ...(o.keytab ? {} : { tickets: new Map() }),
          ...(copy ? { copy } : {}),
        };
      }
      kerberosOnly(g, o, h.cred);
      // Not kept when its copy was retired while it was acquired (the file changed meanwhile: S6):
      // this context, begun before the change, uses it; the next acquire from the file.
      if (h.shared && lifetime > 1 && !copy?.retired) o.credCache?.keep(g, h.shared, Date.now(), (lifetime - 1) * 1000);
      return new GssClient(g, h, o, username, spn);
    } catch (e) {
      release(g, h);
      throw e;
    }
  }

  get contextComplete(): boolean {
    return this.#complete;
  }

  /** The flags GSS-API granted (`ret_flags`). */
  get flags(): number {
    return this.#retFlags;
  }

  /**
   * How the last step called GSS-API: on the event loop (`sync`), on a koffi worker (`async`), or
   * before the request, on a worker (`ahead`).
   */
  get lastCall(): 'sync' | 'async' | 'ahead' | undefined {
    return this.#lastCall;
  }

  /** Makes the first step now, on a koffi worker, for a request still to come (its cache hands it out). */
  stepAhead(): void {
    this.#ahead = this.#step(undefined, false);
    this.#ahead.catch(() => {}); // its request awaits it and gets the error
  }

  /** Whether a context on this credential found the service ticket in the ccache, lasting a while yet. */
  #ticketKnown(now: number): boolean {
    const until = this.#h.shared?.tickets?.get(this.#spn);
    return until !== undefined && now + SYNC_TICKET_MARGIN_MS < until;
  }

  /**
   * Whether this step can call GSS-API on the event loop: it cannot wait on the network. None can
   * where making the target's name may ask DNS (every call makes it: see {@link targetMayWaitOnDns}).
   * Else a later step only processes the server's token (the AP-REP: local crypto). A first step
   * needs a TGS-REQ unless the service ticket is in the ccache (which a context on the same
   * credential found there), and may still wait on something else (a TGT renewal): so only after
   * such a step, made on a worker, was seen to be quick; and never while other requests' handshakes
   * are in flight: the event loop is then what they all wait for, and the first step (the AP-REQ,
   * the dearer call) runs beside it on a worker. The server token's check stays on the event loop
   * even then: starting a call on a worker cost the loop more than the check itself (per-request
   * Kerberos, 50 in flight against the lab's Apache on 2 cores: ~89 µs a start, the thread hand-off
   * and the core the woken worker takes; the check on the loop, 0.91 of the wall time;
   * docs/PERFORMANCE.md).
   */
  #mayCallSync(input: Buffer | undefined, ticketKnown: boolean): boolean {
    if (this.#nameMayWait) return false;
    if (input) return true;
    if (handshakesInFlight > 1) return false;
    return ticketKnown && (this.#credCache?.isFast(this.#spn) ?? false);
  }

  /** Feeds the server's token (base64, '' for none) and returns the next one (null when there is none). */
  async step(challenge: string): Promise<string | null> {
    const input = challenge ? Buffer.from(challenge, 'base64') : undefined;
    if (!this.#h.inFlight && !this.#disposed) {
      this.#h.inFlight = true;
      handshakesInFlight += 1;
    }
    let token: string | null;
    if (!input && this.#ahead) {
      const ahead = this.#ahead;
      this.#ahead = undefined;
      token = await ahead;
      this.#lastCall = 'ahead';
    } else {
      token = await this.#step(input, true);
    }
    if (!input) this.#credCache?.firstTokenTaken(this.#spn, this.#o, Date.now());
    return token;
  }

  /** One `gss_init_sec_context`; `maySync`: on the event loop where it cannot block. */
  async #step(input: Buffer | undefined, maySync: boolean): Promise<string | null> {
    const g = this.#g;
    if (!this.#h.cred) throw new Error('GSS-API context already released');
    const minor = [0];
    const out: OutBuffer = {};
    const retFlags = [0];
    const timeRec = [0];
    const args = [
      minor,
      this.#h.cred,
      this.#h.ctx,
      this.#h.target,
      this.#mech,
      this.#flags,
      0,
      this.#bindings,
      input ? { length: input.length, value: input } : null,
      null,
      out,
      retFlags,
      timeRec,
    ];
    const started = Date.now();
    const ticketKnown = !input && this.#ticketKnown(started);
    const sync = maySync && this.#mayCallSync(input, ticketKnown);
    let major: number;
    try {
      // Synchronous where it cannot block (saves two thread hops); else off the event loop.
      this.#lastCall = sync ? 'sync' : 'async';
      if (sync) {
        major = g.initSecContext(...args) as number;
      } else {
        // A request's own step is given up with its request; one made ahead (no caller yet) with
        // the context, once thrown away unused.
        const call = maySync
          ? callAsync(g.initSecContext, args, this.#gaveUp, this.#onCall)
          : callAsync(g.initSecContext, args, () => this.#disposed);
        this.#busy = call;
        try {
          major = await call;
        } finally {
          this.#busy = undefined;
        }
      }
    } catch (e) {
      // A call never started says nothing of the credential: it stays kept for the next request.
      if (!(e instanceof GssCallAbandonedError)) this.#credCache?.drop();
      this.dispose();
      throw e;
    }
    const tickets = this.#h.shared?.tickets;
    if (tickets && !input && !isGssError(major)) {
      if (ticketKnown) this.#credCache?.noteTicketedStep(this.#spn, Date.now() - started, sync);
      if (!sync) tickets.set(this.#spn, started + timeRec[0]! * 1000);
    }
    const token = takeBuffer(g, out);
    if (isGssError(major)) {
      this.#credCache?.drop();
      let call = 'gss_init_sec_context';
      let text = statusText(g, major, minor[0]!, this.#mech === MECH_KRB5 ? MECH_KRB5 : null);
      // SPNEGO says only that it has no mechanism when the keytab gave Kerberos no ticket (a stale
      // key, a KDC out of reach): Kerberos alone says which (trial u12).
      if (this.#mech !== MECH_KRB5 && this.#o.keytab && SPNEGO_NO_MECHANISM.test(text)) {
        const why = await keytabFailure(g, this.#o, this.#h.name, () => this.#disposed || (this.#gaveUp?.() ?? false));
        if (why !== undefined) {
          call = 'gss_acquire_cred_from';
          text = why;
        }
      }
      // Where making the name may ask DNS (the call that failed may have waited on it), as written:
      // not looked up again on the event loop.
      const service = this.#nameMayWait ? writtenPrincipal(this.#spn) : kerberosName(g, this.#h.target);
      this.dispose();
      // A credential with no Kerberos element (its keytab gave none) is displayed by gss-ntlmssp,
      // as `REALM\user` and a NUL: named as the caller gave it (negotiate.principal) instead.
      const shown = this.username.replace(/\0+$/, '');
      const client = shown.includes('\\') && this.#o.principal ? this.#o.principal : shown;
      throw new GssCallError(call, major, minor[0]!, text, {
        ...(client ? { client } : {}),
        ...(service ? { service } : {}),
      });
    }
    this.#retFlags = retFlags[0]!;
    this.#complete = (major & GSS_S_CONTINUE_NEEDED) === 0;
    if (this.#complete) this.dispose();
    return token.length ? token.toString('base64') : null;
  }

  /**
   * The server refused this context's ticket as sealed with a key it no longer has (its key was
   * rotated): drops that service ticket from the credential's cache, and what this client's owner
   * keeps on it (the credential, a context made ahead with the same ticket), so that the next
   * context asks the KDC for a ticket under the new key. True when a ticket was dropped.
   */
  forgetServiceTicket(): boolean {
    const service = this.#h.target ? kerberosName(this.#g, this.#h.target) : '';
    if (!service || !this.username) return false;
    this.#credCache?.drop();
    return dropServiceTicket(this.#g, cacheOf(this.#o, this.username), service);
  }

  /**
   * Whether the cache this context's credential came from still holds its principal's tickets (S6):
   * false after a `kdestroy`, or a `kinit` / `kswitch` to another principal. Undefined when it cannot
   * tell, or the answer would not mean a switch: a client keytab gets its own principal's tickets
   * again whenever asked. Works after the context is done (it reads only the cache).
   */
  stillHolds(): boolean | undefined {
    if (this.#o.keytab || !this.username) return undefined;
    return cacheHolds(this.#g, cacheOf(this.#o, this.username));
  }

  /** Frees the GSS handles now (also done when the context completes or fails, and on garbage collection). */
  dispose(): void {
    this.#disposed = true;
    // A worker may be using the context, its credential and name right now (a context made ahead,
    // thrown away): MIT allows one thread per context, so release them once that call is over.
    const busy = this.#busy;
    if (busy) {
      const later = () => this.dispose();
      busy.then(later, later);
      return;
    }
    registry.unregister(this);
    release(this.#g, this.#h);
  }
}

/** The text of a name this module obtained (and now releases), or '' when GSS-API cannot say. */
function displayAndRelease(g: GssFunctions, name: [GssHandle]): string {
  try {
    const out: OutBuffer = {};
    if (!name[0] || isGssError(g.displayName([0], name[0], out, null) as number)) return '';
    return takeBuffer(g, out).toString('utf8');
  } finally {
    if (name[0]) g.releaseName([0], name);
  }
}

/** Where `client`'s tickets for contexts made with `o` are: its own ccache, its principal's in the collection, or the default. */
function cacheOf(o: GssClientOptions, client: string): TicketCache {
  return { client, ...(o.ccache ? { ccache: o.ccache } : {}), ...(o.principal ? { principal: o.principal } : {}) };
}

/** `service@host` as a Kerberos principal is written, with no realm (`service/host`): made without GSS-API. */
const writtenPrincipal = (spn: string): string => spn.replace('@', '/');

/** A name as a Kerberos principal (`HTTP/host@REALM`: the realm from krb5.conf's domain_realm), or ''. */
function kerberosName(g: GssFunctions, name: GssHandle): string {
  const canon: [GssHandle] = [null];
  if (!name || isGssError(g.canonicalizeName([0], name, MECH_KRB5, canon) as number)) return '';
  return displayAndRelease(g, canon);
}

/**
 * The principal a credential belongs to (for reports; empty when GSS-API cannot say) and its
 * remaining lifetime in seconds (0 when unknown).
 */
/** MIT SPNEGO's text when none of its mechanisms (here: Kerberos alone) had a credential. */
const SPNEGO_NO_MECHANISM = /SPNEGO cannot find mechanisms to negotiate/;

/**
 * `gss_acquire_cred_from`'s arguments: from `ccache` (or the default cache) and `o.keytab`. Raw
 * Kerberos acquires for Kerberos alone (S6): for every mechanism, a principal without a ticket still
 * gets a credential (gss-ntlmssp's), and MIT's Kerberos context on a credential without a Kerberos
 * element takes the default ticket — another principal's.
 */
function acquireArgs(
  o: GssClientOptions,
  name: GssHandle | undefined,
  ccache: string | undefined,
  cred: [GssHandle],
  minor: number[],
): unknown[] {
  const store: Array<{ key: string; value: string }> = [];
  if (o.keytab) store.push({ key: 'client_keytab', value: o.keytab });
  if (ccache) store.push({ key: 'ccache', value: ccache });
  const mechs = o.mech === 'kerberos' ? { count: 1, elements: [MECH_KRB5] } : null;
  const from = store.length ? { count: store.length, elements: store } : null;
  return [minor, name ?? null, GSS_C_INDEFINITE, mechs, GSS_C_INITIATE, from, cred, null, [0]];
}

/**
 * SPNEGO would otherwise offer every installed mech (gss-ntlmssp would answer with NTLM from
 * NTLM_USER_FILE); NTLM is ours, in TypeScript, so SPNEGO here negotiates Kerberos only. (A
 * Kerberos-only credential has no SPNEGO element to tell.)
 */
function kerberosOnly(g: GssFunctions, o: GssClientOptions, cred: GssHandle): void {
  if (o.mech === 'kerberos') return;
  const minor = [0];
  const major = g.setNegMechs(minor, cred, { count: 1, elements: [MECH_KRB5] }) as number;
  if (isGssError(major)) {
    throw new GssCallError('gss_set_neg_mechs', major, minor[0]!, statusText(g, major, minor[0]!, null));
  }
}

/**
 * A credential from the MEMORY ccache `ccache` (see CredCache's #adoptCopy). On a worker: a copy
 * whose tickets MIT thinks due for a refresh (a `refresh_time` entry, with a default client keytab
 * holding the principal) is refreshed inside the acquire, an AS-REQ to the KDC. Undefined where it
 * fails (the caller keeps what it has).
 */
async function acquireFromCopy(
  g: GssFunctions,
  o: GssClientOptions,
  ccache: string,
): Promise<{ cred: GssHandle; username: string; lifetime: number } | undefined> {
  const name = o.principal ? importName(g, o.principal, NT_USER_NAME) : undefined;
  const cred: [GssHandle] = [null];
  try {
    const major = await callAsync(g.acquireCredFrom, acquireArgs(o, name, ccache, cred, [0]));
    if (isGssError(major)) return undefined;
    kerberosOnly(g, o, cred[0]);
    const { name: username, lifetime } = inquireCredential(g, cred[0]);
    return { cred: cred[0], username, lifetime };
  } catch {
    if (cred[0]) g.releaseCred([0], cred);
    return undefined;
  } finally {
    if (name) g.releaseName([0], [name]);
  }
}

/**
 * Why a client keytab gave SPNEGO no Kerberos credential. Under SPNEGO the credential is acquired
 * for every mechanism, so gss-ntlmssp's element stands in for a Kerberos one that failed (its
 * AS-REQ's error lost), and SPNEGO then only says it has no mechanism. Acquiring for Kerberos alone
 * asks the KDC again and keeps its error: the text, or undefined when it gave a credential now (or
 * the call was given up). Only after such a failure, which the mechanism remembers (no storm).
 */
async function keytabFailure(
  g: GssFunctions,
  o: GssClientOptions,
  name: GssHandle | undefined,
  gaveUp: () => boolean,
): Promise<string | undefined> {
  const store = [{ key: 'client_keytab', value: o.keytab! }, ...(o.ccache ? [{ key: 'ccache', value: o.ccache }] : [])];
  const minor = [0];
  const cred: [GssHandle] = [null];
  let major: number;
  try {
    major = await callAsync(
      g.acquireCredFrom,
      [
        minor,
        name ?? null,
        GSS_C_INDEFINITE,
        { count: 1, elements: [MECH_KRB5] },
        GSS_C_INITIATE,
        { count: store.length, elements: store },
        cred,
        null,
        [0],
      ],
      gaveUp,
    );
  } catch {
    return undefined;
  }
  if (!isGssError(major)) {
    g.releaseCred([0], cred);
    return undefined;
  }
  return statusText(g, major, minor[0]!, MECH_KRB5);
}

function inquireCredential(g: GssFunctions, cred: GssHandle): { name: string; lifetime: number } {
  const name: [GssHandle] = [null];
  const lifetime = [0];
  if (isGssError(g.inquireCred([0], cred, name, lifetime, null, null) as number)) return { name: '', lifetime: 0 };
  return { name: displayAndRelease(g, name), lifetime: lifetime[0]! };
}
