import type { Socket } from 'node:net';
import { readProxySupport, readRemoteHttpVersion } from '../challenge/index.ts';
import { Deadline } from '../deadline.ts';
import type { LegResult, ResponseHeaders, Verdict } from '../handshake/leg.ts';
import type { Limits } from '../options.ts';
import { ProxyAuth, proxyLeg } from './auth.ts';
import { ProxyTimeoutError, RemoteHttp1Error } from './errors.ts';
import type { ProxyRoute } from './options.ts';
import { connectToProxy } from './tunnel.ts';

type Classify = (status: number, headers: ResponseHeaders) => Verdict;
/** A leg on the wire, as far as the proxy's deadline needs it. */
export interface AbortableLeg {
  abort(reason: Error): void;
}
/**
 * Sends one leg on the proxy connection with extra headers and the request-target `path`;
 * `started` is given the leg, so that the proxy's deadline can end it.
 */
export type SendOnProxy = (
  extra: Record<string, string>,
  classify: Classify,
  path: string,
  started?: (leg: AbortableLeg) => void,
) => Promise<LegResult>;

/**
 * One connection to a forwarding proxy (plain-http targets, H5): absolute-form requests on
 * HTTP/1.1, `:authority` on HTTP/2; the proxy's 407s are answered on this connection before the
 * origin's exchange sees anything. Its answers say whether the proxy vouches for session-based
 * authentication (H4) and whether the origin speaks HTTP/1.1 (H3).
 */
export class ForwardProxy {
  readonly route: Extract<ProxyRoute, { kind: 'forward' }>;
  /** The proxy connection, opened at once so the first request knows its request-target form. */
  readonly socket: Promise<Socket>;
  readonly #auth: ProxyAuth;
  readonly #protocol: Promise<'h2' | 'http/1.1' | undefined>;
  readonly #limits: Limits;
  readonly #onRemoteHttp1: () => void;
  readonly #onUnusable: (err: Error) => void;
  #vouched = false;

  constructor(opts: {
    route: Extract<ProxyRoute, { kind: 'forward' }>;
    allowH2: boolean;
    limits: Limits;
    /** The proxy said the origin speaks HTTP/1.1 (H3). */
    onRemoteHttp1: () => void;
    /**
     * The connection must not be used again: the proxy's final token failed mutual authentication,
     * or authenticating to the proxy did not finish within `limits.handshakeTimeout`.
     */
    onUnusable: (err: Error) => void;
  }) {
    this.route = opts.route;
    this.#limits = opts.limits;
    this.#onRemoteHttp1 = opts.onRemoteHttp1;
    this.#onUnusable = opts.onUnusable;
    this.#auth = new ProxyAuth(opts.route.proxy, opts.limits.maxLegs);
    this.socket = connectToProxy(opts.route.proxy, opts.allowH2 ? ['h2', 'http/1.1'] : ['http/1.1']);
    this.#protocol = this.socket.then(
      (s) => ((s as Socket & { alpnProtocol?: string | false }).alpnProtocol === 'h2' ? 'h2' : 'http/1.1'),
      () => undefined,
    );
  }

  /** The proxy's last answer carried `Proxy-support: Session-Based-Authentication` (H4). */
  get vouched(): boolean {
    return this.#vouched;
  }

  /**
   * Sends one leg of a request for `origin` through the proxy, answering its 407s. A request that
   * carries its own `Proxy-Authorization` (S6) goes with exactly that header, and its 407 is the
   * caller's to answer: the agent's proxy credentials are neither added nor used for it.
   */
  async send(
    request: { origin: string; method: string; path: string; ownProxyAuthorization: boolean },
    extra: Record<string, string>,
    classify: Classify,
    sendOnProxy: SendOnProxy,
    onHttp2: () => boolean,
  ): Promise<LegResult> {
    const protocol = await this.#protocol;
    const path = protocol === 'h2' ? request.path : `${request.origin}${request.path}`;
    const host = new URL(request.origin).host;
    if (request.ownProxyAuthorization)
      return sendOnProxy(
        { ...extra, host },
        (status, headers) => {
          if (status !== 407) this.#note(status, headers, onHttp2);
          return classify(status, headers);
        },
        path,
      );
    const leg = proxyLeg(this.route.proxy, request.method, path);
    // R3: the 407 exchange — from the first 407 to the proxy's answer to the last leg, its bodies
    // drained and the mechanism's steps included — is bounded by limits.handshakeTimeout, as a
    // CONNECT is. A leg that ran out of time is ended, and the connection with it.
    let onWire: AbortableLeg | undefined;
    const ms = this.#limits.handshakeTimeout;
    // Made at the first 407 or header step: a request the proxy lets through at once needs none.
    let deadline: Deadline<ProxyTimeoutError> | undefined;
    const clock = (): Deadline<ProxyTimeoutError> => {
      deadline ??= new Deadline(
        ms,
        () => new ProxyTimeoutError(this.route.proxy.origin, ms, 'forward'),
        (err) => {
          onWire?.abort(err);
          this.#onUnusable(err);
        },
      );
      return deadline;
    };
    // (A deadline made while a leg is on the wire ends that leg through `onWire`.)
    const race = <T>(work: Promise<T>): Promise<T> => (deadline ? deadline.race(work) : work);
    const started = (l: AbortableLeg) => {
      onWire = l;
    };
    try {
      for (let answers = 0; ; answers++) {
        // After a success, a per-request scheme (Digest, Basic) makes this request's header: a step too.
        const steps = answers === 0 && this.#auth.state === 'done';
        if (steps) clock().start();
        const credentials = await race(this.#auth.header(leg));
        if (steps) deadline?.stop();
        let challenged: ResponseHeaders | undefined;
        const result = await race(
          sendOnProxy(
            { ...extra, host, ...(credentials ? { 'proxy-authorization': credentials } : {}) },
            (status, headers) => {
              if (status === 407 && answers <= this.#limits.maxLegs) {
                if (!this.route.proxy.deliver407 || this.#auth.canAnswer(headers)) {
                  challenged = headers;
                  clock().start();
                  return 'swallow';
                }
                // proxy.deliver407: the 407 nothing here can answer is the caller's response (curl's way).
                this.#auth.giveUp();
                deadline?.stop();
                return classify(status, headers);
              }
              // The proxy let the request through (or its last 407 goes to the caller): the
              // exchange with the proxy is over, but for its final token; the origin's answer is
              // the origin's to bound.
              this.#note(status, headers, onHttp2);
              const verdict = classify(status, headers);
              if (!(credentials && this.#auth.state === 'handshaking')) {
                deadline?.stop();
                return verdict;
              }
              return this.#proved(this.#auth.succeeded(headers, leg), clock(), verdict);
            },
            path,
            started,
          ),
        );
        onWire = undefined;
        if (result.kind !== 'swallowed' || !challenged) return result;
        await race(this.#auth.answer(challenged, leg));
      }
    } catch (err) {
      return { kind: 'failed', error: err as Error };
    } finally {
      deadline?.stop();
    }
  }

  /**
   * The proxy's final token (M2) is checked before the response it came with reaches anyone, within
   * the deadline, as a CONNECT's is: a response is held for it (`verdict`: the origin's own gate
   * too); a failed check fails the request and the connection is not used again.
   */
  #proved(check: Promise<void>, deadline: Deadline<ProxyTimeoutError>, verdict: Verdict): Verdict {
    const proved = deadline.race(check).then(
      () => deadline.stop(),
      (err: Error) => {
        deadline.stop();
        // (On expiry the deadline's own hook has made the connection unusable already.)
        if (!deadline.timedOut) this.#onUnusable(err);
        throw err;
      },
    );
    if (verdict === 'swallow') {
      // An origin's challenge goes on to its next leg; a failed check closes the connection under it.
      proved.catch(() => {});
      return verdict;
    }
    return verdict === 'deliver' ? proved : Promise.all([proved, verdict]).then(() => {});
  }

  /** What the proxy says of the origin in an answer that is not its own 407 (H3, H4). */
  #note(status: number, headers: ResponseHeaders, onHttp2: () => boolean): void {
    this.#vouched = readProxySupport(headers);
    if (/^1(\.[01])?$/.test(readRemoteHttpVersion(headers) ?? '')) {
      this.#onRemoteHttp1();
      // A challenge over HTTP/2: authenticate over HTTP/1.1 instead (draft §4.2).
      if (status === 401 && onHttp2()) throw new RemoteHttp1Error();
    }
  }
}
