/**
 * The command's agent, shared by its transfers one after another, and whom credentials go to in
 * the transfer under way. Held in one object the command passes to each transfer, so that no
 * module keeps it in a global.
 */
import type { MultilegAgent, MultilegStats } from '../agent.ts';
import type { Credentials } from '../mechanisms/types.ts';
import type { CliRequest } from './options.ts';
import type { RefusalFile } from './refusals.ts';
import type { CliTrust } from './trust.ts';

export class CommandAgent {
  /** The agent every request goes through. */
  readonly agent: MultilegAgent;
  /**
   * Whom credentials go to (curl's rule): the command sets it as each transfer starts (a URL's
   * origin is trusted in its own transfer only); --location-trusted adds to it. The agent's
   * `trustedOrigins` asks it.
   */
  trusted: CliTrust;
  /** Where refused passwords are remembered across the command's runs (R4), when it has one. */
  readonly refusals: RefusalFile | undefined;

  /**
   * `Agent` is the class itself (the command loads it once a request will be made). Throws the
   * agent's ConfigError for options it cannot use.
   */
  constructor(
    Agent: typeof MultilegAgent,
    options: CliRequest['agent'],
    credentials: Credentials | undefined,
    trusted: CliTrust,
    refusals?: RefusalFile,
  ) {
    this.trusted = trusted;
    this.refusals = refusals;
    this.agent = new Agent({
      ...options,
      ...(refusals ? { refusalMemory: refusals } : {}),
      // -i, -D, --json and the HAR show the headers as the server sent them, as curl: no cache is
      // above the command's agent for the `private` it adds to its own identity's responses (S6).
      markPrivate: false,
      // No -u: a 401 whose schemes cannot run here (Negotiate without a Kerberos ticket) is the
      // answer, as curl shows it, from the one request curl sends; the trace says why (kinit…).
      // With -u the typed error stands, as before.
      ...(credentials ? { credentials } : { deliver401: true }),
      trustedOrigins: (origin) => this.trusted.trusts(origin),
    });
  }

  /** The agent's counts (-w %{num_connects}, -v, --json). */
  totals(): MultilegStats {
    return this.agent.stats();
  }

  /** Closes the agent. */
  async destroy(): Promise<void> {
    await this.agent.destroy().catch(() => {});
  }
}
