/**
 * The command's agent, shared by its transfers one after another, and what they share with it:
 * whom credentials go to in the transfer under way, and the agent without Negotiate that replaces
 * it when Negotiate cannot run here (no -u, no usable Kerberos ticket). Held in one object the
 * command passes to each transfer, so that no module keeps it in a global.
 */
import type { MultilegAgent, MultilegStats } from '../agent.ts';
import type { MultilegError } from '../errors.ts';
import type { Credentials } from '../mechanisms/types.ts';
import type { CliRequest } from './options.ts';
import type { CliTrust } from './trust.ts';

export class CommandAgent {
  /** The agent requests go through; replaced once by {@link withoutNegotiate}. */
  agent: MultilegAgent;
  /**
   * Whom credentials go to (curl's rule): the command sets it as each transfer starts (a URL's
   * origin is trusted in its own transfer only); --location-trusted adds to it. The agent's
   * `trustedOrigins` asks it.
   */
  trusted: CliTrust;
  /** Why Negotiate could not run, once the request was sent again without it. */
  cannotRun: MultilegError | undefined;
  /** The replaced agent's counts, kept for {@link totals}. */
  #earlier: MultilegStats | undefined;
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

  /**
   * No -u and no usable Kerberos ticket: curl shows the server's 401, and so does the command,
   * with the request sent once more through an agent without Negotiate; `reason` (kinit…) is then
   * said instead of the usual hint.
   */
  async withoutNegotiate(reason: MultilegError): Promise<void> {
    this.cannotRun = reason;
    this.#earlier = this.agent.stats();
    await this.agent.destroy().catch(() => {});
    this.agent = new this.#Agent({ ...this.#options, negotiate: false, trustedOrigins: (o) => this.trusted.trusts(o) });
  }

  /** Both agents' counts when a request was sent again without Negotiate (-w %{num_connects}, -v, --json). */
  totals(): MultilegStats {
    const now = this.agent.stats();
    const earlier = this.#earlier;
    return earlier
      ? {
          ...now,
          requests: now.requests + earlier.requests,
          sessions: now.sessions + earlier.sessions,
          handshakes: now.handshakes + earlier.handshakes,
          legs: now.legs + earlier.legs,
          failedHandshakes: now.failedHandshakes + earlier.failedHandshakes,
        }
      : now;
  }
}
