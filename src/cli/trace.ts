/**
 * What the CLI saw happen: every leg and handshake, from the library's diagnostics channels. Feeds
 * `-v` (one line per leg, as it happens), `-i` and `-D` (the handshake's heads, the protocol of the
 * final response), `--json`, `--har` and `-w`. Everything here is already redacted by the library (S2).
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import {
  HANDSHAKE_CHANNEL,
  LEG_CHANNEL,
  type LegErrorEvent,
  type LegEvent,
  type LegRequestEvent,
  type LegResponseEvent,
  PROXY_UNANSWERED_CHANNEL,
  type ProxyUnansweredEvent,
  UNANSWERED_CHANNEL,
  type UnansweredEvent,
  WITHHELD_CHANNEL,
  type WithheldEvent,
} from '../diagnostics.ts';
import type { HandshakeReport } from '../session/exchange.ts';
import { challengeSchemes, forCli } from './explain.ts';

/** One leg: its request, and its response or error once known. */
export interface LegRecord {
  readonly request: LegRequestEvent;
  response?: LegResponseEvent;
  error?: LegErrorEvent;
  /** The response body's size as received, when the CLI read it (the final response only). */
  bodySize?: number;
  /** Its size decoded, when --compressed decoded it (--har's content.size). */
  contentSize?: number;
  /** The body its request sent, and that body's Content-Type ('' without one): --har's postData. */
  requestBody?: { readonly bytes: Buffer; readonly mimeType: string };
  /** Its 401 is the answer because what it offers cannot run here (the agent's deliver401), and why. */
  unanswered?: UnansweredEvent;
  /** It went without the credentials, refused or left unanswered there lately (R4): how long (ms) they are still held back. */
  heldBackFor?: number;
}

/**
 * H2: a leg the server refused with HTTP_1_1_REQUIRED (0xd), which the agent answers by sending it
 * again over HTTP/1.1. Node words it by the stream's code name on a RST_STREAM ("Stream closed with
 * error code NGHTTP2_HTTP_1_1_REQUIRED") but by its number on a GOAWAY ("Session closed with error
 * code 13"); the agent's own error for a GOAWAY names it too (MULTILEG_HTTP1_REQUIRED).
 */
export function http1Required(error: LegErrorEvent['error']): boolean {
  return (
    error.code === 'MULTILEG_HTTP1_REQUIRED' ||
    /HTTP_1_1_REQUIRED/.test(error.message) ||
    (error.code === 'ERR_HTTP2_SESSION_ERROR' && /error code 13$/.test(error.message))
  );
}

export class Trace {
  readonly legs: LegRecord[] = [];
  readonly handshakes: HandshakeReport[] = [];
  /** Forwarding proxies' 407s that went to the caller unanswered, with why. */
  readonly unanswered407: ProxyUnansweredEvent[] = [];
  readonly #byId = new Map<number, LegRecord>();
  /** -v lines said once per run (why Negotiate was not used at a place). */
  readonly #said = new Set<string>();
  readonly #verbose: ((line: string) => void) | undefined;
  readonly #onResponse: ((leg: LegRecord) => void) | undefined;
  #lastProtocol: string | undefined;
  readonly #onLeg = (message: unknown) => this.#leg(message as LegEvent);
  readonly #onHandshake = (message: unknown) => this.#handshake(message as HandshakeReport);
  readonly #onUnanswered = (message: unknown) => this.#unanswered(message as ProxyUnansweredEvent);
  readonly #onUnanswered401 = (message: unknown) => this.#unanswered401(message as UnansweredEvent);
  readonly #onWithheld = (message: unknown) => this.#withheld(message as WithheldEvent);
  readonly #onHeld: (() => void) | undefined;
  /**
   * -v: the line of a response not passed to the caller as it came (a 401 or 407 the agent read
   * while trying to answer it), written once its fate is known: intermediate when anything else is
   * said (the next leg goes), the answer when nothing offered can run here (the unanswered events).
   * Written at once, a 401 that turned out to be the answer was labelled intermediate. Written
   * before a line that says nothing of its fate ({@link aside}), it is labelled held.
   */
  #pending: { readonly record: LegRecord; readonly line: (label: LineLabel) => string } | undefined;

  /**
   * `verbose` receives -v lines as they happen; `onResponse` each leg whose response head came (-D,
   * -i); `onHeld` when the last leg's head, reported as intermediate, turns out to be the answer
   * (the command receives it: -i and -D show it once).
   */
  constructor(verbose?: (line: string) => void, onResponse?: (leg: LegRecord) => void, onHeld?: () => void) {
    this.#verbose = verbose;
    this.#onResponse = onResponse;
    this.#onHeld = onHeld;
    subscribe(LEG_CHANNEL, this.#onLeg);
    subscribe(HANDSHAKE_CHANNEL, this.#onHandshake);
    subscribe(PROXY_UNANSWERED_CHANNEL, this.#onUnanswered);
    subscribe(UNANSWERED_CHANNEL, this.#onUnanswered401);
    subscribe(WITHHELD_CHANNEL, this.#onWithheld);
  }

  stop(): void {
    this.flush();
    unsubscribe(LEG_CHANNEL, this.#onLeg);
    unsubscribe(HANDSHAKE_CHANNEL, this.#onHandshake);
    unsubscribe(PROXY_UNANSWERED_CHANNEL, this.#onUnanswered);
    unsubscribe(UNANSWERED_CHANNEL, this.#onUnanswered401);
    unsubscribe(WITHHELD_CHANNEL, this.#onWithheld);
  }

  /**
   * The leg whose response the caller received last (the one on screen). Not a proxy's answer to
   * CONNECT: its leg is published after the request's own first leg (the tunnel opens under it),
   * and its HTTP/1.1 was taken for the protocol of the response that came through the tunnel.
   */
  get lastDelivered(): LegRecord | undefined {
    for (let i = this.legs.length - 1; i >= 0; i--) {
      const leg = this.legs[i]!;
      if (leg.response?.delivered && leg.request.target !== 'proxy') return leg;
    }
    return undefined;
  }

  /** -v: writes the line of a response held back as intermediate (before a line of the command's own). */
  flush(): void {
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = undefined;
    this.#verbose?.(pending.line('intermediate'));
  }

  /**
   * -v: writes the line of a response held back, labelled held, before a line that says nothing of
   * its fate: a wait for another run's lock on the password (R4), which may end with this 401 the
   * answer or with the handshake going on. Its fate is said once known ("its 401 is the answer", or
   * the next leg); labelled intermediate here, an answer was said to be both.
   */
  aside(): void {
    const pending = this.#pending;
    if (!pending) return;
    this.#pending = undefined;
    this.#verbose?.(pending.line('held'));
  }

  /**
   * The body (none: empty) and Content-Type of the request whose legs start at `from` in
   * {@link legs}, for its legs to `origin` (not a proxy's CONNECT, which sends none): --har's.
   */
  sentBody(from: number, origin: string, body: Buffer | undefined, type: string | string[] | undefined): void {
    const requestBody = { bytes: body ?? Buffer.alloc(0), mimeType: [type ?? ''].flat().join(', ') };
    for (const leg of this.legs.slice(from))
      if (leg.request.origin === origin && leg.request.target !== 'proxy') leg.requestBody = requestBody;
  }

  #leg(e: LegEvent): void {
    if (e.phase === 'request') {
      const record: LegRecord = { request: e };
      this.legs.push(record);
      this.#byId.set(e.legId, record);
      // Each header by its own name (a request to a forwarding proxy carries Proxy-Authorization,
      // maybe Authorization too), its scheme only: the redacted value is `Scheme [redacted]`, or
      // `[redacted]` for a value with no scheme word (an API key sent raw), all secret (S2).
      const sent = (['Authorization', 'Proxy-Authorization'] as const).flatMap((header) =>
        e.headers
          .filter(([n]) => n === header.toLowerCase())
          .map(([, v]) => `${header}: ${v.replace(/ \[redacted\]$/, ' …')}`),
      );
      // T3: the client certificate its session offers (its subject only: S2) is a credential too.
      const shown = [
        ...(sent.length > 0 ? [`${sent.join(', ')}, Auth-ID: ${e.authId ? 'yes' : 'no'}`] : []),
        ...(e.certificate !== undefined ? [`client certificate ${e.certificate}`] : []),
      ];
      const auth = shown.length > 0 ? shown.join(', ') : 'no credentials';
      const where = e.target === 'proxy' ? `proxy ${e.origin}` : `session ${e.sessionId}`;
      this.#say(`> ${e.method} ${e.path} (${auth}) [${where}${e.protocol ? `, ${proto(e.protocol)}` : ''}]`);
      return;
    }
    const record = this.#byId.get(e.legId);
    if (!record) return;
    if (e.phase === 'response') {
      record.response = e;
      if (e.protocol === 'http/1.1' && this.#lastProtocol === 'h2')
        this.#say(
          `* now over HTTP/1.1 (session ${e.sessionId}): the server asked for it (HTTP_1_1_REQUIRED) or lost the handshake between HTTP/2 streams`,
        );
      if (e.protocol) this.#lastProtocol = e.protocol;
      const offers = e.status === 401 || e.status === 407 ? challengeSchemes(e.headers, e.status) : [];
      const authId = e.headers.some(([n]) => n === 'auth-id');
      const persistent = e.headers.find(([n]) => /^persist(ent|ed)-auth$/.test(n))?.[1];
      const line = (label: LineLabel) =>
        `< ${e.status}${offers.length ? ` offers ${offers.join(', ')}` : ''}${authId ? ' (Auth-ID)' : ''}${persistent !== undefined ? ` (Persistent-Auth: ${persistent})` : ''} [${proto(e.protocol)}${label === 'answer' ? '' : `, ${label}`}]`;
      if (e.delivered || !this.#verbose) this.#say(line(e.delivered ? 'answer' : 'intermediate'));
      else {
        this.flush();
        this.#pending = { record, line };
      }
      this.#onResponse?.(record);
    } else {
      record.error = e;
      // IIS refuses NTLM over HTTP/2 with HTTP_1_1_REQUIRED: the agent sends the request again
      // over HTTP/1.1, so this is news, not a failure.
      if (http1Required(e.error))
        this.#say('* the server wants this request over HTTP/1.1 (HTTP_1_1_REQUIRED): sending it again there');
      // The library's message names its options (proxy.credentials): here, the flags that set them.
      else this.#say(`! ${e.error.code ?? e.error.name}: ${forCli(e.error.message)}`);
    }
  }

  #handshake(r: HandshakeReport): void {
    this.handshakes.push(r);
    const outcome =
      r.outcome === 'session'
        ? 'the session is authenticated'
        : r.outcome === 'per-request'
          ? 'each request authenticates on its own'
          : r.failure === 'opening'
            ? 'failed at its opening, refused before any password went'
            : // An origin's failure says why where the report does (C3: an Auth-ID given twice).
              !r.proxy && r.failureReason
              ? `failed (${forCli(r.failureReason)})`
              : 'failed';
    // Kerberos skipped inside Negotiate (NTLM in SPNEGO) is that handshake's own news; for another
    // scheme (the proxy's NTLM, Basic…) it is why Negotiate was not used: a line of its own, once
    // (appended, it read as that scheme's, and again on each of its handshakes).
    const inside = r.fallbackReason !== undefined && /^negotiate$/i.test(r.scheme);
    if (r.fallbackReason !== undefined && !inside) {
      const where = r.proxy ? `proxy ${r.origin}` : r.origin;
      const line = `* ${where}: Negotiate not used: ${r.fallbackReason}`;
      if (!this.#said.has(line)) {
        this.#said.add(line);
        this.#say(line);
      }
    }
    const detail = `${r.identity ? ` as ${r.identity}` : ''}${r.spn ? ` (SPN ${r.spn})` : ''}${inside ? `; Kerberos skipped: ${r.fallbackReason}` : ''}`;
    if (r.proxy) {
      // H5: the proxy's own handshake (no Auth-ID there); a refusal says so.
      const failed =
        r.failure === 'refused'
          ? 'failed: the proxy refused the credentials'
          : // Why it ended, where an error did (the command's words for the options it names): a
            // handshake that gives way to the proxy's next scheme says why it did (T2).
            r.failureReason
            ? `failed (${forCli(r.failureReason)})`
            : outcome;
      const how = r.outcome === 'session' ? 'the connection to the proxy is authenticated' : failed;
      this.#say(
        `* proxy ${r.origin}: ${r.scheme} handshake for session ${r.sessionId} (${proto(r.protocol)}): ${r.legs} leg(s), ${how}${detail}`,
      );
      return;
    }
    this.#say(
      `* ${r.scheme} handshake on session ${r.sessionId} (${proto(r.protocol)}): ${r.legs} leg(s), Auth-ID ${r.authIdCarried ? 'carried' : 'not used'}, ${outcome}${detail}`,
    );
  }

  #unanswered(e: ProxyUnansweredEvent): void {
    this.unanswered407.push(e);
    // A 407 read while the agent tried to answer it (reported intermediate), held and now the
    // answer (the mechanism for it cannot run here): the command receives it, so it shows once.
    const record = this.legs.findLast((l) => l.request.origin === e.origin);
    const r = record?.response;
    if (record && r && !r.delivered && r.status === 407) {
      record.response = { ...r, delivered: true };
      this.#onHeld?.();
      this.#answer(record);
    }
    this.#say(`* proxy ${e.proxy}: its 407 goes unanswered: ${unansweredWhy(e)}`);
  }

  /**
   * A 401 is the answer because what it offers cannot run here. It belongs to the origin's last
   * leg (the command sends one request at a time): one whose head has not come yet (a scheme known
   * to be unusable: its head comes next, delivered), or one whose 401 was read while the agent
   * tried to answer it (reported intermediate: now the answer).
   */
  #unanswered401(e: UnansweredEvent): void {
    const record = this.legs.findLast((l) => l.request.origin === e.origin);
    if (record) {
      record.unanswered = e;
      const r = record.response;
      if (r && !r.delivered && r.status === 401) {
        record.response = { ...r, delivered: true };
        this.#onHeld?.();
        this.#answer(record);
      }
    }
    const why = e.unusable.map((u) => `${u.scheme} cannot run here (${u.code})`).join(', ');
    this.#say(`* its 401 is the answer: ${why || 'nothing offered can run here'}`);
  }

  /**
   * A 401 is the answer because the credentials are held back (R4): the origin's last leg, whose
   * head comes next (delivered), or whose 401 was read while the agent meant to answer it (reported
   * intermediate) and the refusal memory then held the password back — or did not answer within
   * limits.queueTimeout (R1: another run's try of the password held its lock): now the answer.
   */
  #withheld(e: WithheldEvent): void {
    const why =
      e.reason === 'refused-lately' && e.heldBackFor !== undefined
        ? `the credentials, refused or left unanswered here lately, are held back for another ${Math.ceil(e.heldBackFor / 1000)} s`
        : e.reason === 'recall-timeout' && e.queueTimeout !== undefined
          ? // (The final line names whose lock it waited for: lockWaitLine.)
            `no credentials were sent: another run's try of the same password did not end within ${Math.ceil(e.queueTimeout / 1000)} s (limits.queueTimeout)`
          : undefined;
    if (why === undefined) return;
    const record = this.legs.findLast((l) => l.request.origin === e.origin);
    if (record) {
      if (e.reason === 'refused-lately') record.heldBackFor = e.heldBackFor;
      const r = record.response;
      if (r && !r.delivered && r.status === 401) {
        record.response = { ...r, delivered: true };
        this.#onHeld?.();
        this.#answer(record);
      }
    }
    this.#say(`* its 401 is the answer: ${why}`);
  }

  /** -v: the held line of `record`'s response is the answer: written without "intermediate". */
  #answer(record: LegRecord): void {
    const pending = this.#pending;
    if (pending?.record !== record) return;
    this.#pending = undefined;
    this.#verbose?.(pending.line('answer'));
  }

  #say(line: string): void {
    this.flush();
    this.#verbose?.(line);
  }
}

/** How -v labels a response's line: the answer (unlabelled), intermediate, or held while its fate is not known. */
type LineLabel = 'answer' | 'intermediate' | 'held';

function proto(p: string | undefined): string {
  return p === 'h2' ? 'HTTP/2' : p === 'http/1.1' ? 'HTTP/1.1' : '?';
}

/** -v: why a forwarding proxy's 407 went to the caller unanswered, in words. */
function unansweredWhy(e: ProxyUnansweredEvent): string {
  switch (e.reason) {
    case 'refused':
      return 'it refused the credentials';
    case 'refused-lately':
      return `it refused the credentials lately: held back ${Math.ceil((e.heldBackFor ?? 0) / 1000)} s more (R4)`;
    case 'recall-timeout':
      // (The final line names whose lock it waited for: lockWaitLine.)
      return `no credentials were sent: another run's try of the same password did not end within ${Math.ceil((e.queueTimeout ?? 0) / 1000)} s (limits.queueTimeout)`;
    case 'unusable':
      return e.unusable.map((u) => `${u.scheme} cannot run here (${u.code})`).join(', ');
    case 'unconfigured':
      return `nothing configured for ${e.schemes.join(', ') || 'what it offers'}`;
  }
}
