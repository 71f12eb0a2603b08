/**
 * The command's agent, shared by its transfers one after another, and what they share with it:
 * whom credentials go to in the transfer under way, and, per origin where Negotiate cannot run (no
 * -u, no usable Kerberos ticket), the agent without Negotiate its requests go through. Held in one object the
 * command passes to each transfer, so that no module keeps it in a global.
 */
import type { MultilegAgent, MultilegStats } from '../agent.ts';
import type { MultilegError } from '../errors.ts';
import type { Credentials } from '../mechanisms/types.ts';
import type { CliRequest } from './options.ts';
import type { CliTrust } from './trust.ts';

export class CommandAgent {
  /** The agent requests go through, but to an origin in {@link #without}. */
  readonly agent: MultilegAgent;
  /**
   * Whom credentials go to (curl's rule): the command sets it as each transfer starts (a URL's
   * origin is trusted in its own transfer only); --location-trusted adds to it. The agent's
   * `trustedOrigins` asks it.
   */
  trusted: CliTrust;
  /**
   * Per origin where Negotiate could not run: the agent without Negotiate its requests go
   * through, and why. Per origin, not for the command: with several URLs, Kerberos failing at one
   * host (its SPN unknown) says nothing of the next.
   */
  readonly #without = new Map<string, { readonly agent: MultilegAgent; readonly reason: MultilegError }>();
  readonly #Agent: typeof MultilegAgent;
  readonly #options: CliRequest['agent'];

  /**
   * `Agent` is the class itself (the command loads it once a request will be made). Throws the
   * agent's ConfigError for options it cannot use.
   */
  constructor(
    Agent: typeof MultilegAgent,
    options: CliRequest['agent'],
    credentials: Credentials | undefined,
    trusted: CliTrust,
  ) {
    this.#Agent = Agent;
    this.#options = options;
    this.trusted = trusted;
    this.agent = new Agent({
      ...options,
      ...(credentials ? { credentials } : {}),
      trustedOrigins: (origin) => this.trusted.trusts(origin),
    });
  }

  /** The agent a request to `origin` goes through. */
  agentFor(origin: string): MultilegAgent {
    return this.#without.get(origin)?.agent ?? this.agent;
  }

  /** Why Negotiate could not run at `origin`, once its requests go without it. */
  cannotRunAt(origin: string): MultilegError | undefined {
    return this.#without.get(origin)?.reason;
  }

  /**
   * No -u and no usable Kerberos ticket for `origin`: curl shows the server's 401, and so does
   * the command, with the request sent once more through an agent without Negotiate; `reason`
   * (kinit…) is then said instead of the usual hint.
   */
  withoutNegotiate(origin: string, reason: MultilegError): void {
    const agent = new this.#Agent({
      ...this.#options,
      negotiate: false,
      trustedOrigins: (o) => this.trusted.trusts(o),
    });
    this.#without.set(origin, { agent, reason });
  }

  /** Every agent's counts together (-w %{num_connects}, -v, --json). */
  totals(): MultilegStats {
    const sum = { ...this.agent.stats() };
    for (const { agent } of this.#without.values()) {
      const s = agent.stats();
      sum.requests += s.requests;
      sum.sessions += s.sessions;
      sum.handshakes += s.handshakes;
      sum.legs += s.legs;
      sum.failedHandshakes += s.failedHandshakes;
    }
    return sum;
  }

  /** Closes every agent. */
  async destroy(): Promise<void> {
    await Promise.all(
      [this.agent, ...[...this.#without.values()].map((w) => w.agent)].map((a) => a.destroy().catch(() => {})),
    );
  }
}
