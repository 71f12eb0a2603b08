/**
 * A Negotiate handshake (RFC 4559) through GSS-API (M2, M5): the system GSS-API via koffi
 * (src/mechanisms/gssapi) where it loads, else the optional `kerberos` package. SPNEGO or raw
 * Kerberos, SPN `HTTP@host` by default, principal choice, a per-agent ccache or client keytab, TLS
 * channel bindings on https, delegation only when asked, and mutual authentication (the server's
 * final token is verified; a server that fails it is an error). When Kerberos cannot produce a
 * first token (no ticket, expired, wrong realm, unknown SPN, no GSS-API) and the agent has a
 * password, it falls back to NTLM inside Negotiate (src/mechanisms/spnego), as Windows' SSPI does,
 * and says why in `fallbackReason`. Loaded by a context's first step (mechanism.ts).
 */
import type { Challenge } from '../../challenge/types.ts';
import {
  InvalidTokenError,
  MechanismError,
  MultilegError,
  MutualAuthError,
  SystemNtlmRefusedError,
} from '../../errors.ts';
import { log } from '../../log.ts';
import { CredCache, GssCallAbandonedError, type GssCallState } from '../gssapi/index.ts';
import { decodeOidContent, readTlv } from '../spnego/der.ts';
import { SpnegoNtlmContext } from '../spnego/ntlm.ts';
import {
  decodeNegTokenInit,
  decodeNegTokenResp,
  isNegTokenReject,
  OID_KRB5,
  OID_MS_KRB5,
  OID_NTLMSSP,
  OID_SPNEGO,
} from '../spnego/tokens.ts';
import type { LegInfo, MechanismContext } from '../types.ts';
import { GSS_C_DELEG_FLAG, GSS_C_MUTUAL_FLAG, GSS_C_SEQUENCE_FLAG, type KerberosClientLike } from './addon.ts';
import { loadBackend } from './backend.ts';
import {
  fallbackReasonOf,
  KerberosKeytabError,
  KerberosNoTicketError,
  KerberosOtherPrincipalError,
  KerberosTicketExpiredError,
  mapGssError,
  type NegotiateFallbackReason,
  TICKET_RECHECK_MS,
  ticketFixes,
} from './errors.ts';
import { type KerberosMemory, kerberosRemembered, type NegotiateOptions, SCHEME } from './mechanism.ts';
import { spnFor, spnWithoutLookup } from './spn.ts';

/** Largest base64 token accepted from a server (S3). */
export const MAX_NEGOTIATE_TOKEN_LENGTH = 64 * 1024;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * How long "no Kerberos here" is remembered before GSS-API is asked again: no binding, a keytab that
 * gives no ticket, only another principal's ticket. No ticket or an expired one: TICKET_RECHECK_MS.
 */
export const NO_KERBEROS_MEMORY_MS = 30_000;

/** Strictly decodes nothing, but validates a server token (canonical base64, bounded length; S3). */
function checkToken(token: string): string {
  if (
    token.length === 0 ||
    token.length > MAX_NEGOTIATE_TOKEN_LENGTH ||
    token.length % 4 !== 0 ||
    !BASE64.test(token)
  ) {
    throw new InvalidTokenError('Negotiate token (bad base64 or too long)');
  }
  return token;
}

/** The GSS flags a context asks for. */
export function negotiateFlags(o: Pick<NegotiateOptions, 'delegate' | 'mutualAuth'>): number {
  let flags = GSS_C_MUTUAL_FLAG | GSS_C_SEQUENCE_FLAG;
  if (o.delegate) flags |= GSS_C_DELEG_FLAG;
  return flags;
}

type State = 'initial' | 'sent' | 'done';

/** One Negotiate handshake: Kerberos through GSS-API, or NTLM inside Negotiate when Kerberos cannot start. */
export class NegotiateContext implements MechanismContext {
  readonly #o: NegotiateOptions;
  readonly #memory: KerberosMemory;
  #state: State = 'initial';
  #client: KerberosClientLike | undefined;
  #fallback: SpnegoNtlmContext | undefined;
  #spn = '';
  #mutualVerified = false;
  /** finish() took the server's answer: its final token verified, or none where mutual auth is optional. */
  #accepted = false;
  #fallbackReason: NegotiateFallbackReason | undefined;
  #channelBound = false;
  #firstLegCompletes = false;
  /** GSS-API made a token after the first: SPNEGO may have switched mechanisms (to gss-ntlmssp's NTLM). */
  #steppedOn = false;
  /** GSS-API's own SPNEGO is known to run NTLMSSP (gss-ntlmssp, SSPI), not Kerberos. */
  #systemNtlm = false;
  /** The refused-ticket drops there had been when this context made its first token. */
  #ticketEpoch = 0;
  #renewed = false;
  /** Set while a GSS-API call of this context runs (see {@link waitingOn}). */
  #waiting = false;
  /** Where this context's GSS-API call on a worker is, if it has one (see ffi.ts callAsync). */
  #call: GssCallState = 'done';
  readonly #onCall = (state: GssCallState): void => {
    this.#call = state;
  };
  /** The client {@link #over} freed (a context that starts again after a kept credential failed makes another). */
  #freed: KerberosClientLike | undefined;
  /** {@link dispose} was called: no step makes a token any more. */
  #disposed = false;

  constructor(o: NegotiateOptions, memory: KerberosMemory) {
    this.#o = o;
    this.#memory = memory;
  }

  get complete(): boolean {
    if (this.#fallback) return this.#fallback.complete;
    return this.#client?.contextComplete ?? false;
  }

  get firstLegCompletes(): boolean {
    return this.#firstLegCompletes;
  }

  /**
   * An SPNEGO reject (Kerberos inside SPNEGO, or NTLM inside it): the server's final refusal. One
   * that says our ticket is sealed with a key the server no longer has (its key was rotated) also
   * drops that ticket from the cache, so that the next handshake gets one under the new key from
   * the KDC instead of being refused until the ticket expires (hours) — at most once per SPN per
   * STALE_TICKET_MEMORY_MS, so a server whose keytab is wrong costs the KDC no storm (R4).
   */
  rejects(challenge: Challenge): boolean {
    if (challenge.token68 === undefined || !isNegTokenReject(challenge.token68)) return false;
    const client = this.#client;
    if (client?.forgetServiceTicket && this.#state === 'sent' && staleKeyError(challenge.token68) !== undefined) {
      const memory = this.#memory;
      memory.staleTickets ??= new Map();
      const drops = memory.staleTickets;
      const last = drops.get(this.#spn);
      const now = Date.now();
      if (last === undefined || now >= last.until) {
        if (client.forgetServiceTicket()) {
          memory.ticketEpoch = (memory.ticketEpoch ?? 0) + 1;
          this.#renewed = true;
        }
        drops.set(this.#spn, { epoch: memory.ticketEpoch ?? 0, until: now + STALE_TICKET_MEMORY_MS });
        log.handshake('Negotiate: %s refused a ticket under an old key; dropped: %s', this.#spn, this.#renewed);
      } else {
        // Another request dropped it meanwhile: ours was the old ticket too (made before that drop).
        this.#renewed = this.#ticketEpoch < last.epoch;
      }
    }
    // Refused: over (a run again is a new context's).
    this.#over();
    return true;
  }

  /** The server refused this context's ticket, which has been dropped since: run once more (R4: once). */
  get renewed(): boolean {
    return this.#renewed;
  }

  /**
   * The principal whose ticket the server took: once the context is complete, or once finish()
   * took an answer without a final token (mutualAuth `optional`: proxies rarely send one, and the
   * proxy holds the connection as that principal all the same, which S6 must know).
   */
  get identity(): string | undefined {
    if (this.#fallback) return this.#fallback.identity;
    const client = this.#client;
    const u = client && (client.contextComplete || this.#accepted) ? client.username : undefined;
    return u || undefined;
  }

  /**
   * S1: NTLM that the system's SPNEGO runs (SSPI's fallback, gss-ntlmssp with NTLM_USER_FILE) answers
   * with the logged-on user's password, which goes only where a password may (`passwordAllowed`; an
   * agent without trustedOrigins allows it nowhere). Before, an agent with no password and no list
   * (the `kerberos` addon, Windows' and macOS' only backend) sent it to any https origin offering
   * Negotiate, which could relay it and log in as that user (task id). Nothing more is sent.
   */
  #refuseSystemNtlm(leg: LegInfo): void {
    if (this.#o.passwordAllowed?.(leg.origin) ?? true) return;
    this.#over();
    throw new SystemNtlmRefusedError(leg.origin);
  }

  #canFallBack(leg: LegInfo): boolean {
    const o = this.#o;
    return (
      o.credentials !== undefined &&
      o.ntlmFallback !== false &&
      o.mech !== 'kerberos' &&
      (o.passwordAllowed?.(leg.origin) ?? true)
    );
  }

  /**
   * While GSS-API works for this context: it may wait on a KDC or DNS, not on the server. Not while
   * its call only waits in the queue for a worker others hold (review r46: that is no fault of this
   * KDC, and must not be remembered as one).
   */
  get waitingOn(): string | undefined {
    if (!this.#waiting || this.#call === 'queued') return undefined;
    return `GSS-API for ${this.#spn} (the KDC or DNS: check krb5.conf's kdc entries for the realm, and that kinit reaches that KDC)`;
  }

  /** The SPN this context asked a ticket for (after the first step). */
  get spn(): string {
    return this.#spn;
  }

  /** True when the handshake fell back to NTLM inside SPNEGO. */
  get usedNtlmFallback(): boolean {
    return this.#fallback !== undefined;
  }

  /**
   * NTLM inside Negotiate authenticates the connection, as NTLM does (C5, H1): ours (the fallback), or
   * NTLMSSP that the system's SPNEGO chose (gss-ntlmssp with NTLM_USER_FILE, SSPI) — known only from
   * the wire, see {@link ntlmsspChosen}. Unknown stays false: Kerberos per request, as before.
   */
  get connectionBound(): boolean {
    return this.#fallback !== undefined || this.#systemNtlm;
  }

  /**
   * False only once a Kerberos AP-REQ went and no NTLM: the fallback sends the password, and a first
   * token that is not an AP-REQ may be NTLMSSP that GSS-API chose (gss-ntlmssp's own password), as
   * may a later token (a server that took SPNEGO's next mechanism instead) — unsure counts as a
   * password (R4).
   */
  get sentPassword(): boolean {
    return this.#fallback !== undefined || !this.#firstLegCompletes || this.#steppedOn;
  }

  /** Why Kerberos was skipped for NTLM (`code: message`), when it was. */
  get fallbackReason(): string | undefined {
    return this.#fallbackReason && `${this.#fallbackReason.code}: ${this.#fallbackReason.message}`;
  }

  /** True when the Kerberos token carries the TLS channel bindings. */
  get channelBound(): boolean {
    return this.#channelBound;
  }

  #mapError(e: unknown): MultilegError {
    return mapGssError(e, {
      spn: this.#spn,
      ...(this.#o.principal ? { principal: this.#o.principal } : {}),
      ...(this.#o.keytab ? { keytab: this.#o.keytab } : {}),
      ...(this.#o.ccache ? { ccache: this.#o.ccache } : {}),
      // An SPN given as such: its value is what to check, not "pass negotiate.spn".
      ...(this.#o.spn ? { spnGiven: true } : {}),
      // No "give credentials for the NTLM fallback" where there is none (a proxy's Negotiate).
      ...(this.#o.ntlmFallback === false ? { fallback: false } : {}),
      // H5: a proxy's names proxy.negotiate.* and its credentials, the options to set for it.
      naming: this.#memory.names,
    });
  }

  /** Kerberos's first token, from whichever backend loads. */
  async #firstKerberosToken(leg: LegInfo, gaveUp: (() => boolean) | undefined, again = false): Promise<string | null> {
    const o = this.#o;
    // The backend loads once per mechanism (a failure is tried again by the next request).
    this.#memory.backend ??= await loadBackend(o, this.#memory.names.options);
    const backend = this.#memory.backend;
    this.#memory.bindsChannel = backend.bindsChannel;
    const cb = o.channelBindings !== false && backend.bindsChannel ? leg.channelBinding : undefined;
    this.#memory.creds ??= new CredCache();
    this.#ticketEpoch = this.#memory.ticketEpoch ?? 0;
    this.#client = await backend.initializeClient(this.#spn, {
      mech: o.mech ?? 'spnego',
      flags: negotiateFlags(o),
      ...(o.principal ? { principal: o.principal } : {}),
      ...(o.ccache ? { ccache: o.ccache } : {}),
      ...(o.keytab ? { keytab: o.keytab } : {}),
      ...(cb ? { channelBinding: cb } : {}),
      credCache: this.#memory.creds,
      ...(gaveUp ? { gaveUp } : {}),
      onCall: this.#onCall,
    });
    // Credentials name the caller's identity: another user's ticket (whoever ran kinit) is not
    // used for them — unless negotiate.principal chose a Kerberos identity of its own. (The addon
    // backend names the ticket's owner only once the context is complete: not checked there.)
    const ticket = this.#client.username;
    if (o.credentials && !o.principal && ticket && !sameUser(ticket, o.credentials.username)) {
      this.#client.dispose?.();
      this.#client = undefined;
      throw new KerberosOtherPrincipalError(ticket, o.credentials.username, this.#memory.names);
    }
    const client = this.#client;
    let out: string | null;
    try {
      out = await client.step('');
    } catch (e) {
      // A credential kept from an earlier request (CredCache), whose cache has changed since (a
      // kdestroy; kinit as another principal): the failure dropped it, and the cache says only now
      // what it holds. Once more on a credential acquired now — as a request that started after
      // the change does (S6: concurrent first steps on the old one all failed, and their requests
      // went on on the old principal's sessions).
      if (again || e instanceof GssCallAbandonedError || !client.keptCredential || client.stillHolds?.() !== false)
        throw e;
      log.handshake('Negotiate: the kept credential of %s left its cache; acquired anew', client.username);
      return this.#firstKerberosToken(leg, gaveUp, true);
    }
    this.#channelBound = cb !== undefined;
    return out;
  }

  /** NTLM inside Negotiate from here on, because Kerberos could not make a first token (`reason`). */
  #fallBack(reason: NegotiateFallbackReason, leg: LegInfo): Promise<string> {
    log.handshake('Negotiate: Kerberos skipped (%s); NTLM inside Negotiate instead', reason.code);
    this.#client = undefined;
    this.#fallbackReason = reason;
    this.#fallback = new SpnegoNtlmContext(this.#o.credentials!, {
      wrap: this.#o.ntlmFallback || 'spnego',
      ...(this.#o.mutualAuth ? { mutualAuth: this.#o.mutualAuth } : {}),
    });
    return this.#fallback.step(undefined, leg);
  }

  step(challenge: Challenge | undefined, leg: LegInfo, gaveUp?: () => boolean): Promise<string> {
    // NTLM inside Negotiate answers for itself: no async frame of ours around each of its steps.
    if (this.#fallback) return this.#fallback.step(challenge, leg);
    if (this.#state === 'initial' && challenge?.token68 === undefined) {
      // Per-request mode asks for a token per request: don't ask GSS-API again and again when it
      // just said it has no usable credentials — answer as that failure would, straight away.
      const memory = this.#memory;
      if (kerberosRemembered(memory) && this.#canFallBack(leg)) return this.#fallBack(memory.reason!, leg);
    }
    return this.#step(challenge, leg, gaveUp);
  }

  async #step(challenge: Challenge | undefined, leg: LegInfo, gaveUp?: () => boolean): Promise<string> {
    const token = challenge?.token68 !== undefined ? checkToken(challenge.token68) : undefined;
    if (this.#state === 'initial') {
      const memory = this.#memory;
      if (kerberosRemembered(memory) && this.#canFallBack(leg)) return await this.#fallBack(memory.reason!, leg);
      // Kerberos was remembered unusable and its time ran out: this context asks again, the others
      // falling back until it knows (kerberosRemembered).
      const recheck = memory.reason !== undefined && this.#canFallBack(leg);
      if (recheck) memory.rechecking = true;
      try {
        // A token in the first challenge is not meaningful to an initiator with no context: ignored.
        this.#spn =
          spnWithoutLookup(this.#o, leg.hostname, leg.port) ??
          (await spnFor(this.#o, leg.hostname, leg.port, this.#o.resolveCname));
      } catch (e) {
        if (recheck) memory.rechecking = false;
        throw e;
      }
      let out: string | null;
      try {
        this.#waiting = true;
        out = await this.#firstKerberosToken(leg, gaveUp);
        // Kerberos made a token: nothing to remember any more.
        if (recheck) memory.reason = undefined;
      } catch (e) {
        this.#waiting = false;
        // Its handshake gave up while the call waited for a worker: no NTLM for a dead handshake.
        if (e instanceof GssCallAbandonedError) throw e;
        const err = e instanceof MultilegError ? e : this.#mapError(e);
        const reason = fallbackReasonOf(err);
        // Credentials (not this host) are at fault: remember it for a while — a second only when a
        // kinit mends it, so that its ticket, not the password's NTLM, serves soon after.
        if (credentialLevel(err)) {
          this.#memory.unavailableUntil =
            Date.now() + (ticketFixes(err.code) ? TICKET_RECHECK_MS : NO_KERBEROS_MEMORY_MS);
          this.#memory.reason = reason;
        }
        // Kerberos cannot produce a token; a password can still authenticate, with NTLM (as SSPI does).
        if (this.#canFallBack(leg)) return await this.#fallBack(reason, leg);
        throw err;
      } finally {
        this.#waiting = false;
        if (recheck) memory.rechecking = false;
      }
      if (this.#disposed) {
        // The handshake ended while GSS-API made the token (its clock, the caller's abort): unsent.
        this.#over();
        throw new MechanismError(SCHEME, 'the Negotiate handshake is over; no further token can be produced');
      }
      this.#state = 'sent';
      if (!out) throw new MechanismError(SCHEME, 'GSS-API produced no initial token');
      this.#firstLegCompletes = carriesKerberosApReq(out);
      this.#systemNtlm = isRawNtlmssp(out);
      // S1: a first token that is no Kerberos ticket is the system's NTLM (SSPI, gss-ntlmssp), which
      // answers with a password where the password may not go (task id).
      if (!this.#firstLegCompletes) this.#refuseSystemNtlm(leg);
      return `${SCHEME} ${out}`;
    }
    if (this.#state === 'done' || !this.#client) {
      throw new MechanismError(SCHEME, 'the Negotiate handshake is over; no further token can be produced');
    }
    if (token === undefined) {
      this.#over();
      throw new MechanismError(
        SCHEME,
        `the server rejected the Negotiate token for ${this.#spn} (401 without a token); check that the server's keytab matches the SPN and the client's realm is trusted`,
      );
    }
    // The server's first reply names the mechanism it chose (RFC 4178 §4.2.2 supportedMech).
    if (!this.#steppedOn && !this.#systemNtlm) this.#systemNtlm = ntlmsspChosen(token);
    if (this.#systemNtlm) this.#refuseSystemNtlm(leg);
    let out: string | null;
    try {
      out = await this.#client.step(token);
    } catch (e) {
      this.#state = 'done';
      throw this.#mapError(e);
    }
    if (!out) {
      this.#over();
      throw new MechanismError(SCHEME, 'the server asked for another leg but GSS-API has nothing more to send');
    }
    this.#steppedOn = true;
    return `${SCHEME} ${out}`;
  }

  /**
   * The handshake is over: its GSS-API context, complete or not, is freed now. An incomplete one (no
   * final token taken, a refusal) would else count as a handshake in flight (C4: every lone request's
   * calls then go to a worker) until collected — never, while the mechanism keeps it for its
   * principal (S6 `holders`, which asks only its cache).
   */
  #over(): void {
    this.#state = 'done';
    const client = this.#client;
    if (client === undefined || client === this.#freed) return;
    this.#freed = client;
    client.dispose?.();
  }

  /**
   * Its handshake ended (see {@link MechanismContext.dispose}): the GSS-API context is freed now, once,
   * whatever state it is in. A first step still running then frees what it makes when it returns.
   */
  dispose(): void {
    this.#disposed = true;
    this.#over();
  }

  finish(challenge: Challenge | undefined, leg: LegInfo): Promise<void> {
    if (this.#fallback) return this.#fallback.finish(challenge);
    return this.#finish(challenge, leg);
  }

  async #finish(challenge: Challenge | undefined, leg: LegInfo): Promise<void> {
    const client = this.#client;
    if (!client || this.#state === 'initial') return; // no handshake took place
    if (this.#state === 'done' && this.#mutualVerified) return;
    const token = challenge?.token68;
    if (token !== undefined && !client.contextComplete) {
      checkToken(token);
      try {
        await client.step(token);
      } catch (e) {
        this.#state = 'done';
        throw new MutualAuthError(
          `the server's final Negotiate token for ${this.#spn} failed GSS-API verification (${this.#mapError(e).message})`,
        );
      }
      if (!client.contextComplete) {
        this.#over();
        throw new MutualAuthError(`the server's final Negotiate token for ${this.#spn} did not complete the context`);
      }
      this.#mutualVerified = true;
    } else if (!client.contextComplete && (this.#o.mutualAuth ?? 'required') === 'required') {
      this.#over();
      // H5: a proxy's option is proxy.negotiate.mutualAuth.
      throw new MutualAuthError(
        `the server sent no final Negotiate token for ${this.#spn} (to ${leg.origin})`,
        `pass ${this.#memory.names.options}.mutualAuth: 'optional' if it never sends a final token`,
      );
    }
    this.#over();
    this.#accepted = true;
    // Sessions authenticated as this principal ask later whether its tickets are still there (S6).
    if (client.stillHolds && client.username) {
      this.#memory.holders ??= new Map();
      this.#memory.holders.set(client.username, client);
    }
  }
}

/**
 * Whether a first GSS-API token (base64) is a Kerberos AP-REQ, raw or as the optimistic token of a
 * SPNEGO NegTokenInit that prefers Kerberos. GSS-API may instead pick NTLMSSP (gss-ntlmssp): that
 * takes more legs.
 */
export function carriesKerberosApReq(base64: string): boolean {
  // Per-request Kerberos asks this of every first token (1-2 KB): the answer is in its first bytes.
  if (base64.length > AP_REQ_PREFIX) {
    const quick = apReqFromPrefix(Buffer.from(base64.slice(0, AP_REQ_PREFIX), 'base64'));
    if (quick !== undefined) return quick;
  }
  let der: Buffer;
  try {
    der = Buffer.from(base64, 'base64');
    if (der[0] !== 0x60) return false;
    const oid = readTlv(readTlv(der).content);
    const mech = oid.tag === 0x06 ? decodeOidContent(oid.content) : '';
    if (mech === OID_KRB5 || mech === OID_MS_KRB5) return true;
    if (mech !== OID_SPNEGO) return false;
    const init = decodeNegTokenInit(der);
    const first = init.mechTypes[0];
    return init.mechToken !== undefined && (first === OID_KRB5 || first === OID_MS_KRB5);
  } catch {
    return false;
  }
}

/** How long after dropping a refused service ticket another refusal for that SPN drops none (R4). */
export const STALE_TICKET_MEMORY_MS = 30_000;

/**
 * KRB-ERROR codes (RFC 4120 §7.5.9) that say the ticket is sealed with a key the server lacks:
 * KRB_AP_ERR_MODIFIED (41: same kvno, other key), KRB_AP_ERR_BADKEYVER (44), KRB_AP_ERR_NOKEY (45).
 */
const STALE_KEY_ERRORS: ReadonlySet<number> = new Set([41, 44, 45]);

/**
 * The KRB-ERROR code in a server's refusal (base64: an SPNEGO negTokenResp whose responseToken is
 * a Kerberos GSS token, RFC 4121 §4.1, TOK_ID 03 00), when it is one of {@link STALE_KEY_ERRORS}.
 */
export function staleKeyError(base64: string): number | undefined {
  try {
    let der: Buffer = Buffer.from(base64, 'base64');
    if (der[0] === 0xa1) {
      const inner = decodeNegTokenResp(der).responseToken;
      if (!inner) return undefined;
      der = inner;
    }
    if (der[0] !== 0x60) return undefined;
    const body = readTlv(der).content;
    const oid = readTlv(body);
    const mech = oid.tag === 0x06 ? decodeOidContent(oid.content) : '';
    if ((mech !== OID_KRB5 && mech !== OID_MS_KRB5) || body[oid.end] !== 0x03 || body[oid.end + 1] !== 0x00) {
      return undefined;
    }
    const krbError = readTlv(body, oid.end + 2);
    if (krbError.tag !== 0x7e) return undefined;
    const seq = readTlv(krbError.content);
    if (seq.tag !== 0x30) return undefined;
    for (let at = 0; at < seq.content.length; ) {
      const field = readTlv(seq.content, at);
      if (field.tag === 0xa6) {
        const int = readTlv(field.content);
        if (int.tag !== 0x02 || int.content.length === 0 || int.content.length > 4) return undefined;
        const code = int.content.readIntBE(0, int.content.length);
        return STALE_KEY_ERRORS.has(code) ? code : undefined;
      }
      at = field.end;
    }
    return undefined;
  } catch {
    return undefined;
  }
}

/** "NTLMSSP\0" in base64: the start of every NTLM message (SSPI's Negotiate may send NTLM unwrapped). */
const NTLMSSP_BASE64 = 'TlRMTVNTUAA';

/** Whether a base64 GSS-API token is a bare NTLM message rather than a GSS or SPNEGO token. */
function isRawNtlmssp(base64: string): boolean {
  return base64.startsWith(NTLMSSP_BASE64);
}

/**
 * Whether a server's first Negotiate token (base64) says NTLMSSP authenticates this handshake: an
 * SPNEGO NegTokenResp whose supportedMech is NTLMSSP, or a bare NTLM message (an answer to one).
 * Anything else — Kerberos, no supportedMech, a token that does not decode — is false: the caller
 * then keeps Kerberos's per-request rule, so only a positive NTLMSSP changes how later requests go.
 */
function ntlmsspChosen(base64: string): boolean {
  if (isRawNtlmssp(base64)) return true;
  try {
    const der = Buffer.from(base64, 'base64');
    return der[0] === 0xa1 && decodeNegTokenResp(der).supportedMech === OID_NTLMSSP;
  } catch {
    return false;
  }
}

/**
 * Base64 characters of a first token read by the quick check (96 bytes): the GSS framing, the mech
 * OID and SPNEGO's mech list up to the optimistic token's tag, for any token GSS-API makes here.
 */
const AP_REQ_PREFIX = 128;
const KRB5_OID = Buffer.from([0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02]);
const MS_KRB5_OID = Buffer.from([0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02]);
const SPNEGO_OID = Buffer.from([0x2b, 0x06, 0x01, 0x05, 0x05, 0x02]);

/** Tag and content bounds of the DER element at `at` (its content may run past `buf`): undefined if its head does. */
function derHead(buf: Buffer, at: number): { tag: number; start: number; end: number } | undefined {
  if (at + 2 > buf.length) return undefined;
  let len = buf[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > buf.length) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  return { tag: buf[at]!, start, end: start + len };
}

function oidIs(buf: Buffer, h: { start: number; end: number }, oid: Buffer): boolean {
  if (h.end - h.start !== oid.length || h.end > buf.length) return false;
  for (let i = 0; i < oid.length; i++) if (buf[h.start + i] !== oid[i]) return false;
  return true;
}

/**
 * {@link carriesKerberosApReq} from the first bytes of a token: the same fields (the GSS mech, SPNEGO's
 * first mech and whether an optimistic token follows the list), or undefined when they lie past `buf`
 * (the whole token is decoded then).
 */
function apReqFromPrefix(buf: Buffer): boolean | undefined {
  const app = derHead(buf, 0);
  if (app?.tag !== 0x60) return app ? false : undefined;
  const oid = derHead(buf, app.start);
  if (!oid || oid.end > buf.length) return undefined;
  if (oid.tag !== 0x06) return false;
  if (oidIs(buf, oid, KRB5_OID) || oidIs(buf, oid, MS_KRB5_OID)) return true;
  if (!oidIs(buf, oid, SPNEGO_OID)) return false;
  const choice = derHead(buf, oid.end);
  const seq = choice?.tag === 0xa0 ? derHead(buf, choice.start) : undefined;
  if (seq?.tag !== 0x30) return undefined;
  let first: boolean | undefined;
  for (let at = seq.start; ; ) {
    const field = derHead(buf, at);
    if (!field) return undefined;
    if (field.tag === 0xa0) {
      const list = derHead(buf, field.start);
      if (list?.tag !== 0x30) return undefined;
      const mech = list.end > list.start ? derHead(buf, list.start) : undefined;
      if (mech?.tag !== 0x06 || mech.end > buf.length) return undefined;
      first = oidIs(buf, mech, KRB5_OID) || oidIs(buf, mech, MS_KRB5_OID);
    } else if (field.tag === 0xa2) {
      const inner = derHead(buf, field.start);
      if (!inner) return undefined;
      if (inner.tag === 0x04) return first;
    }
    if (field.end >= seq.end) return first === undefined ? undefined : false;
    at = field.end;
  }
}

/**
 * Whether a Kerberos principal (`user@REALM`) is the user `name` says (`DOMAIN\user`, `DOMAIN/user`,
 * `user@domain` or `user`), by the user part, case-insensitively: what follows `@` in credentials is an NTLM
 * domain or a UPN suffix, neither of which need be the realm, and Windows user names ignore case.
 */
function sameUser(principal: string, name: string): boolean {
  const userOf = (plain: string) => {
    const at = plain.lastIndexOf('@');
    return (at < 0 ? plain : plain.slice(0, at)).toLowerCase();
  };
  // A `/` in the principal is a Kerberos instance (`alice/admin` is not alice); in the name, a domain.
  const inName = Math.max(name.lastIndexOf('\\'), name.lastIndexOf('/'));
  return userOf(principal.slice(principal.lastIndexOf('\\') + 1)) === userOf(name.slice(inName + 1));
}

/** Failures of the client's own credentials (or of GSS-API itself), not of one server's SPN. */
function credentialLevel(err: unknown): boolean {
  return (
    err instanceof KerberosNoTicketError ||
    err instanceof KerberosTicketExpiredError ||
    // A keytab that cannot give a ticket is not asked again by every request (a stale key is a failed
    // pre-authentication at the KDC each time, which can lock the account): a fixed one is read after 30 s.
    err instanceof KerberosKeytabError ||
    err instanceof KerberosOtherPrincipalError ||
    (err instanceof MultilegError && err.code === 'MULTILEG_MECHANISM_UNAVAILABLE')
  );
}
