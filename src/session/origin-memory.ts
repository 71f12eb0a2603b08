import type { ClientCertificate } from '../options.ts';

/**
 * What the agent has learnt about one origin, shared by its sessions: which scheme it wants and
 * whether that authenticates sessions or requests (C4), and whether authentication must use
 * HTTP/1.1 (H2, legacy servers), for how long.
 */
export class OriginMemory {
  scheme: string | undefined;
  /** Set once the origin asked for a client certificate and one was chosen (T3): sessions present it. */
  clientCertificate: ClientCertificate | undefined;
  mode: 'session' | 'per-request' | undefined;
  #http1Until = 0;
  readonly #ttl: number;

  constructor(http1Ttl: number) {
    this.#ttl = http1Ttl;
  }

  get requiresHttp1(): boolean {
    return Date.now() < this.#http1Until;
  }

  rememberHttp1(): void {
    this.#http1Until = Date.now() + this.#ttl;
  }

  rememberScheme(scheme: string, mode: 'session' | 'per-request'): void {
    this.scheme = scheme;
    this.mode = mode;
  }
}
