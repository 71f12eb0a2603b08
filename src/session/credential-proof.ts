import { QueueTimeoutError } from '../errors.ts';
import { log } from '../log.ts';
import type { RefusalKeeping, RefusalPlace, RememberedRefusal } from './refusal-memory.ts';
import { type WaitBounds, type Waiter, WaitQueue } from './wait-queue.ts';

/**
 * How long "this cannot work here" is remembered before one request tries again (R4): a scheme that
 * cannot run (no Kerberos ticket, no addon: a kinit may follow), or credentials the server refused.
 */
export const UNUSABLE_MEMORY_MS = 30_000;

/**
 * Longest that a refused password is kept back. Each refusal of it in a row doubles the wait from
 * UNUSABLE_MEMORY_MS (30 s, 1 min, 2 min … 30 min), so that a process left running with a wrong
 * password tries it about 7 times in its first 30 minutes and then twice an hour — under the
 * lockout thresholds Active Directory is usually given (5–10 bad attempts within 10–30 minutes)
 * for the first, and never anywhere near them afterwards. A refused Kerberos ticket locks no
 * account: it is kept back UNUSABLE_MEMORY_MS each time, so that a fixed keytab or a new kinit
 * is tried within 30 s.
 */
export const MAX_REFUSED_MEMORY_MS = 30 * 60_000;

/**
 * How long a success keeps the credentials proved for handshakes that send a password: while one
 * succeeded this recently, they run side by side; past it, the next goes alone first (a burst after
 * a quiet spell would otherwise try a changed password once per request before the first refusal).
 */
export const PROOF_FRESH_MS = 1_000;

/** What a handshake may do with the credentials: run ({@link Ticket}), or go without them. */
export type Admission = Ticket | 'refused';

/**
 * How a request's wait of {@link CredentialProof.watch} ended: `decided`, nothing is being proved
 * here any more (it goes on as the outcome says); `withheld`, the refusal memory did not answer
 * within queueTimeout, and the request goes without the password, as the probe's did.
 */
export type Watched = 'decided' | 'withheld';

/**
 * Where a request stands with one proof's {@link CredentialProof.watch}, which it waits on once at
 * most (so its waits stay bounded in number): not yet; `watched` (waiting, or woken `decided`); or
 * woken `withheld`: it goes without the credentials, the refusal memory not asked again for it.
 */
export type WatchStage = 'unwatched' | 'watched' | 'withheld';

/** Why credentials met a challenge unsent (R4, R1): see {@link CredentialProof.heldBackWhy}. */
export type HeldBackWhy = 'refused-lately' | 'recall-timeout';

/** Leave given so far, at every place: see {@link Ticket.admitted}. */
let given = 0;

/** One handshake's leave to send the credentials; given back with its outcome ({@link CredentialProof.settle}). */
export class Ticket {
  /**
   * Its place in the order leave is given, over every origin and proxy (S6): a handshake carries
   * the credentials of when it got leave, so of two that proved different accounts at one place, the
   * later-admitted one carried the newer (a slower one may end after it: ProvedIdentity).
   */
  readonly admitted = ++given;
  /** It runs alone: the others wait for its outcome. */
  probe: boolean;
  /** The refusals counted when it was admitted (a success proves nothing about a later refusal). */
  epoch: number;
  settled = false;
  /** The refusal that ends its handshake was counted already ({@link CredentialProof.again}). */
  counted = false;
  /** The credentials it was admitted for ({@link CredentialProof.reset} starts new ones). */
  readonly generation: number;
  /**
   * It is leave for a password too: a probe's, or one given while the proof was fresh. Not one given
   * for no password (a Kerberos ticket) while the proof is stale: a password sent under it would
   * skip the one-at-a-time trial (R4), so a switch to a password takes leave anew ({@link covers}).
   */
  readonly password: boolean;
  /** The place its leave was recalled for (RefusalMemory.recall): released when it settles. */
  recalled: RefusalPlace | undefined;
  constructor(probe: boolean, epoch: number, generation = 0, password = true) {
    this.probe = probe;
    this.epoch = epoch;
    this.generation = generation;
    this.password = probe || password;
  }

  /** Whether it is leave for credentials that derive from a password or not (`password`). */
  covers(password: boolean): boolean {
    return this.password || !password;
  }
}

/** How a handshake with the credentials ended, as far as they are concerned. */
export type ProofOutcome =
  /** The server took them (a final answer that is not a refusal). */
  | 'success'
  /** The server refused them: a final 401 (407 from a proxy) to the last leg. */
  | 'refused'
  /** As `refused`, of a handshake that surely sent no password (a Kerberos ticket only: `sentPassword`, mechanisms/registry.ts). */
  | 'refused-no-password'
  /**
   * A leg carrying the password (or what derives from it: NTLM's AUTHENTICATE, Basic, a Digest
   * answer — not an NTLM NEGOTIATE, not a Kerberos ticket alone) was written and never answered: the
   * handshake timed out or its connection closed under it. The server may have counted it: while
   * the credentials are not proved it counts as a refusal of a password does (the wait doubles), so
   * a server that never answers it is not sent the password once per request; while they are proved
   * it says nothing (a slow server, not a wrong password).
   */
  | 'unanswered'
  /** It says nothing about them: an error, a timeout, an abort, a 5xx, an unanswered first leg. */
  | 'none';

/**
 * Whether the agent's credentials are known to work at one place (an origin, or a proxy), so that a
 * wrong or changed password is tried there at most twice in a row — not once per request, session or
 * connection, as curl and .NET do: an Active Directory account locks after a few bad attempts (often
 * 5–10 in 30 minutes), and a rotated password the process still holds would lock it.
 *
 * - Proved (a handshake with them succeeded here, and nothing was refused since): handshakes run side
 *   by side — for a password only while the proof is fresh ({@link PROOF_FRESH_MS}); past that the
 *   next one goes alone first.
 * - Not proved (never yet, or refused once since): one handshake at a time; the others wait for its
 *   outcome, bounded like every wait (R1). A success proves them; a refusal of credentials not proved
 *   (the second in a row after a proof) makes them refused.
 * - A password leg written and never answered (a timeout, a close: `'unanswered'`) while they are not
 *   proved may have been counted by the server: the first in a row lets one more handshake try (a
 *   slow server), the second and each after it until a success count as a refusal; while they are
 *   proved it says nothing.
 * - Refused: for {@link UNUSABLE_MEMORY_MS} no handshake sends them here (requests go without them and
 *   get the server's answer, R4); then one tries again. A password refused again doubles the wait,
 *   up to {@link MAX_REFUSED_MEMORY_MS}; a success starts over. A refusal of a handshake that sent no
 *   password (a Kerberos ticket) keeps them back UNUSABLE_MEMORY_MS and doubles nothing.
 *
 * A success counts only for a handshake admitted after the last refusal: one admitted before it may
 * have been checked before the password changed, and must not make a burst run side by side again.
 */
export class CredentialProof {
  #proved = false;
  #provedAt = 0;
  #refusedUntil = 0;
  /** A refusal was lifted by the caller since the credentials last succeeded ({@link liftRefusal}). */
  #lifted = false;
  /** How many times in a row a password was refused here (reset by a success): the next such wait doubles. */
  #refusedTimes = 0;
  #epoch = 0;
  #probing = false;
  /** A leg carrying the unproved password went unanswered since the last success ('unanswered'). */
  #unansweredBefore = false;
  /** Bumped when the credentials are replaced: tickets of older ones say nothing about these. */
  #generation = 0;
  #queue: WaitQueue<Admission, Waiter> | undefined;
  /** What a waiting handshake waits for, for QueueTimeoutError / QueueFullError. */
  readonly #what: string;
  /** Where refusals are kept beyond this agent (AgentOptions.refusalMemory), bound to this place. */
  readonly #keeping: RefusalKeeping | undefined;
  /** Why the agent ended ({@link end}): every wait here fails with it at once. */
  #ended: Error | undefined;
  /** The recalls waiting now ({@link awaitRecall}): each ends its wait with the error given. */
  #recalling: Set<(err: Error) => void> | undefined;
  /** Requests that would have gone bare while a recall waited, waiting for the outcome ({@link watch}). */
  #watchers: WaitQueue<Watched, Waiter> | undefined;
  /** What a request sent without the credentials after its recall was given up got, and when ({@link withheldAnswer}). */
  #withheld: { readonly answer: Error; readonly at: number } | undefined;
  /** Told when a recall of the refusal memory begins to wait here ({@link onRecall}). */
  readonly #recallListeners = new Set<() => void>();

  constructor(what: string, keeping?: RefusalKeeping) {
    this.#what = what;
    this.#keeping = keeping;
  }

  /** A handshake with the credentials succeeded here and none was refused since. */
  get proved(): boolean {
    return this.#proved;
  }

  /** The credentials were refused here lately: nothing sends them until UNUSABLE_MEMORY_MS has passed. */
  get refused(): boolean {
    return this.#refusedUntil !== 0 && Date.now() < this.#refusedUntil;
  }

  /**
   * Why leave to send the credentials was refused just now ({@link enter} said `'refused'`, or a
   * handshake waited for had it said so): `refused-lately`, they are held back (a refusal the memory
   * recalled, or one met meanwhile); else `recall-timeout`, the memory's recall given up at
   * queueTimeout (R1: it refused nothing). Read when that was decided: a round trip later it may say
   * otherwise (a refusal lifted or lapsed, another request's recall holding them back).
   */
  get heldBackWhy(): HeldBackWhy {
    return this.refused ? 'refused-lately' : 'recall-timeout';
  }

  /**
   * A handshake sending the password here now would ask the refusal memory first ({@link enter}):
   * the agent has one with a say for these credentials, and they are not proved lately (a probe).
   * What it recalls may hold the password back: the 401 that asked for it is then the answer.
   */
  get mayRecall(): boolean {
    if (!this.#keeping || this.refused) return false;
    // (What #admit asks of a password: refused or freshly proved, no probe, no recall.)
    if (this.#freshlyProved()) return false;
    return this.#keeping.place() !== undefined;
  }

  /**
   * What an idle origin pool must not forget (R4): a refusal still holding the credentials back,
   * one a later refusal doubles from, or a leg carrying the password left unanswered, none followed
   * by a success. A pool made anew would send a refused password at once, and wait 30 s again.
   */
  get remembersRefusal(): boolean {
    return this.#refusedTimes > 0 || this.#unansweredBefore || this.refused;
  }

  /**
   * A handshake's recall of the refusal memory waits now (another process trying the password, say):
   * no password goes here until it ends, at most queueTimeout (R1). Requests that would go bare
   * meanwhile wait for its outcome instead ({@link watch}: their bound begins after the recall's),
   * not for a connection (OriginPool #maxSessions, #watchProxy), whose wait, begun before the recall,
   * ran out first (QueueTimeoutError); the proof keeps the password to one try.
   */
  get recalling(): boolean {
    return this.#recalling !== undefined && this.#recalling.size > 0;
  }

  /**
   * R1/R4: the answer a request got that went without the credentials because the refusal memory's
   * recall it waited for was given up (a proxy's 407 to a bare CONNECT, recall-timeout): every other
   * request withheld so would send the same bare request and get the same, so it is theirs at once —
   * a request waits for a recall at most once, and meets its answer at most once on the wire.
   * Forgotten when what would be sent changes (credentials replaced, a refusal lifted or met, a
   * success) or after {@link UNUSABLE_MEMORY_MS}, as an unusable scheme is.
   */
  get withheldAnswer(): Error | undefined {
    const w = this.#withheld;
    if (w && Date.now() - w.at >= UNUSABLE_MEMORY_MS) this.#withheld = undefined;
    return this.#withheld?.answer;
  }

  /** Keeps `answer` as the {@link withheldAnswer} (the first one stands until forgotten). */
  keepWithheldAnswer(answer: Error): void {
    if (this.withheldAnswer === undefined) this.#withheld = { answer, at: Date.now() };
  }

  /** Proved within {@link PROOF_FRESH_MS}: a password may go side by side with others, no probe. */
  #freshlyProved(): boolean {
    return this.#proved && Date.now() - this.#provedAt < PROOF_FRESH_MS;
  }

  /** How long (ms) the credentials are still kept back here; 0 when they are not. */
  get refusedFor(): number {
    return Math.max(0, this.#refusedUntil - Date.now());
  }

  /**
   * Whether a handshake may send the credentials now: a {@link Ticket}, `'refused'` (go without
   * them), or undefined: another handshake is proving them, {@link wait} for its outcome — or the
   * agent has a refusal memory to ask before a probe of the password: only {@link enter} asks it.
   * `password`: the handshake sends something derived from a password (see {@link PROOF_FRESH_MS}).
   */
  admit(password: boolean): Admission | undefined {
    const admission = this.#admit(password);
    // A probe of a password the refusal memory has a say in takes leave through enter (which asks it).
    if (admission instanceof Ticket && admission.probe && password && this.#keeping?.place()) {
      this.#probing = false;
      return undefined;
    }
    return admission;
  }

  #admit(password: boolean): Admission | undefined {
    if (this.refused) return 'refused';
    const fresh = this.#freshlyProved();
    if (this.#proved && (!password || fresh)) {
      return new Ticket(false, this.#epoch, this.#generation, fresh);
    }
    if (this.#probing) return undefined;
    this.#probing = true;
    return new Ticket(true, this.#epoch, this.#generation);
  }

  /** Waits for the running probe's outcome (bounded by `bounds`, abortable through `waiter`, R1). */
  wait(waiter: Waiter, bounds: WaitBounds): Promise<Admission> {
    if (this.#ended) return Promise.reject(this.#ended);
    this.#queue ??= new WaitQueue<Admission, Waiter>(bounds, this.#what);
    return this.#queue.wait(waiter);
  }

  /**
   * R4: a request that would go bare now, while a probe here waits for the refusal memory's recall
   * ({@link recalling}), waits instead until nothing is being proved here: the recall held the
   * password back, gave up, or let the probe go and it ended. Going bare at once, it would meet its
   * own 401, wait for that same outcome anyway, then run its handshake: a bare leg more per request
   * than without a memory, where HTTP/1.1 holds such requests for a connection until the proof
   * (OriginPool #maxSessions, which lets them go while a recall waits). Afterwards a scheme the
   * probe proved leads at once. Bounded like every wait (R1: maxQueue, queueTimeout, the caller's
   * abort); begun after the recall, its bound ends after the recall's, which wakes it `withheld`
   * when it gives up.
   */
  watch(waiter: Waiter, bounds: WaitBounds): Promise<Watched> {
    if (this.#ended) return Promise.reject(this.#ended);
    if (!this.#probing) return Promise.resolve('decided');
    this.#watchers ??= new WaitQueue<Watched, Waiter>(bounds, this.#what);
    // Its bound, begun in the same millisecond as the recall's, may still fire first (the queue's
    // deadline is Date.now()'s, rounded; the recall's a plain timer): a recall still waiting then is
    // given up for this request as it would be a moment later — `withheld`, not QueueTimeoutError
    // (1 run in 6 of a burst's test).
    return this.#watchers
      .wait(waiter)
      .catch((err: Error) => (err instanceof QueueTimeoutError && this.recalling ? 'withheld' : Promise.reject(err)));
  }

  /**
   * {@link admit}, or else {@link wait}. A probe sending the password asks the refusal memory first
   * (when the agent has one): what it remembers may hold the password back here, as a refusal met
   * here would (R4: refusals met by other processes) — a request woken from the wait as the next
   * probe too (the running one given back unused: its caller gone, say), which sent the password
   * unasked. Its recall is bounded afresh: the wait and the recall one queueTimeout each.
   */
  enter(password: boolean, waiter: Waiter, bounds: WaitBounds): Admission | Promise<Admission> {
    if (this.#ended) return Promise.reject(this.#ended);
    const admission = this.#admit(password);
    if (admission === undefined)
      return this.wait(waiter, bounds).then((woken) => this.#recall(woken, password, waiter, bounds));
    return this.#recall(admission, password, waiter, bounds);
  }

  /**
   * R1/R4: `listener` is told each time a recall of the refusal memory begins to wait here
   * ({@link recalling}: a probe's, or that of a waiter handed the probe), which may take up to
   * limits.queueTimeout before anything goes on that connection. A proxy's origin pools listen:
   * their requests waiting for a connection wait for the recall's outcome instead (OriginPool
   * #watchWaiting), rather than past their own bound, begun before the recall's. Once per recall,
   * not per handshake waiting behind it (a burst's every tunnel): nothing else a pool's requests
   * waiting there would do differently. Told synchronously, so a listener must not enter this proof
   * (the pools' only move waiting requests to {@link watch}). Returns what stops it.
   */
  onRecall(listener: () => void): () => void {
    this.#recallListeners.add(listener);
    return () => {
      this.#recallListeners.delete(listener);
    };
  }

  /** `admission`, or, for a probe sending the password, what the refusal memory recalls of it first. */
  #recall(admission: Admission, password: boolean, waiter: Waiter, bounds: WaitBounds): Admission | Promise<Admission> {
    if (admission === 'refused' || !admission.probe || !password || !this.#keeping) return admission;
    const place = this.#keeping.place();
    if (!place) return admission;
    const memory = this.#keeping.memory;
    let recalled: RememberedRefusal | undefined | Promise<RememberedRefusal | undefined>;
    // Aborted when this request gives up on a recall that waits: the memory's wait ends with it.
    const givenUp = new AbortController();
    try {
      recalled = memory.recall(place, givenUp.signal);
    } catch (err) {
      log.agent('refusal memory: recall failed: %s', (err as Error).message);
      return admission;
    }
    admission.recalled = place;
    if (!(recalled instanceof Promise)) return this.#recalled(admission, recalled);
    const waiting = this.#awaitRecall(admission, recalled, bounds.queueTimeout, waiter, givenUp);
    // (Once the wait is set up: a listener reading {@link recalling} sees this one's recall, unless
    // the agent's end or the caller's abort already gave it up.)
    if (this.recalling) for (const listener of [...this.#recallListeners]) listener();
    return waiting;
  }

  /**
   * A recall that waits (another process's try of the password, say) is bounded like every wait
   * (R1: queueTimeout, and the caller's abort): past it the probe is given back unused and its
   * request goes without the password — when in doubt, none is sent — and so do the requests
   * waiting for its outcome, which waited as long for a memory still silent (another process may be
   * trying the password: one of them sending it unasked would be a second try, and each asking in
   * turn a second wait); a later request asks again. Given up at the caller's abort, the probe goes
   * to the next waiter, which asks the memory itself ({@link enter}). The memory is told
   * (`givenUp`), so that its own wait ends too (a poll of another run's lock went on for good behind
   * a stopped run); a recall that settles later is released then (one release per recall).
   */
  #awaitRecall(
    ticket: Ticket,
    recalled: Promise<RememberedRefusal | undefined>,
    timeout: number,
    waiter: Waiter,
    givenUp: AbortController,
  ): Promise<Admission> {
    const place = ticket.recalled!;
    return new Promise<Admission>((resolve, reject) => {
      let late = false;
      const giveUp = (end: () => void) => {
        late = true;
        this.#recalling?.delete(stop);
        clearTimeout(timer);
        waiter.sink.onAbort(undefined);
        ticket.recalled = undefined;
        this.settle(ticket, 'none');
        givenUp.abort();
        end();
      };
      // The agent's destroy ends it too (R1): nothing else would before queueTimeout.
      const stop = (err: Error) => giveUp(() => reject(err));
      this.#recalling ??= new Set();
      this.#recalling.add(stop);
      const timer = setTimeout(() => {
        log.agent(
          'refusal memory: no answer within %d ms (limits.queueTimeout): this request goes without the password',
          timeout,
        );
        // (Before the probe is given back: #wake would hand it to the first of them.)
        this.#queue?.settleAll('refused');
        this.#watchers?.settleAll('withheld');
        giveUp(() => resolve('refused'));
      }, timeout);
      // The caller's abort ends this wait as it ends a queued one (R1).
      waiter.sink.onAbort((reason) => giveUp(() => reject(reason)));
      // (Ended as a waiter was woken, a microtask before this recall began.)
      if (this.#ended) stop(this.#ended);
      const settled = (admission: () => Admission) => {
        if (late) {
          this.#tell((m) => m.release(place));
          return;
        }
        clearTimeout(timer);
        this.#recalling?.delete(stop);
        waiter.sink.onAbort(undefined);
        resolve(admission());
      };
      recalled.then(
        (r) => settled(() => this.#recalled(ticket, r)),
        (err: Error) =>
          settled(() => {
            log.agent('refusal memory: recall failed: %s', err.message);
            return ticket;
          }),
      );
    });
  }

  /** What the memory recalled for `ticket`'s probe: held back ('refused') while in force, else the probe goes. */
  #recalled(ticket: Ticket, r: RememberedRefusal | undefined): Admission {
    // The credentials were replaced meanwhile, or a refusal came: this probe is no longer the one.
    if (ticket.generation !== this.#generation || ticket.epoch !== this.#epoch || r === undefined) return ticket;
    // Refused that many times in a row: the next refusal here doubles on from there.
    this.#refusedTimes = Math.max(this.#refusedTimes, r.times);
    if (r.until <= Date.now()) return ticket;
    this.#proved = false;
    this.#refusedUntil = Math.max(this.#refusedUntil, r.until);
    // The probe is given back unused: the handshakes waiting for it go without, as it does.
    this.settle(ticket, 'none');
    return 'refused';
  }

  /**
   * The server refused the credentials in the middle of `ticket`'s handshake, which could try them
   * once more (a Digest answer to a remembered nonce: the server may only have forgotten the nonce).
   * Counts the refusal; true when that one more try may go — only while the credentials stay
   * proved after it (they were before, so this is the first refusal in a row) and nothing else is
   * proving them.
   */
  again(ticket: Ticket): boolean {
    // A refusal of credentials replaced since is no refusal of the new ones (R4).
    if (ticket.generation !== this.#generation) {
      ticket.counted = true;
      return false;
    }
    const wasProved = this.#proved;
    this.#refuse();
    ticket.epoch = this.#epoch;
    const more = wasProved && !this.refused && (ticket.probe || !this.#probing);
    if (more) ticket.probe = this.#probing = true;
    // Otherwise this refusal ends the handshake: settling it as refused must not count it twice.
    else ticket.counted = true;
    return more;
  }

  /**
   * Whether `ticket`'s leave still holds for a new handshake of its request: not given back, for the
   * current credentials, and no refusal counted here since it was given (R4: a request admitted
   * before the refusal, sent again behind another's handshake, would carry the refused password
   * once more — once per request of a burst).
   */
  holds(ticket: Ticket): boolean {
    return !ticket.settled && ticket.generation === this.#generation && ticket.epoch === this.#epoch && !this.refused;
  }

  /**
   * A refusal of `ticket`'s handshake may run once more with the current credentials: they replaced
   * the ones it was admitted for ({@link reset}: the refusal says nothing of them), and are not
   * refused here lately (R4: they would not be sent). The caller bounds it to once.
   */
  rerunsAfterRefusal(ticket: Ticket): boolean {
    return ticket.generation !== this.#generation && !this.refused;
  }

  /** Gives `ticket` back with its handshake's outcome (once; later calls are ignored). */
  settle(ticket: Ticket, outcome: ProofOutcome): void {
    if (ticket.settled) return;
    ticket.settled = true;
    try {
      this.#settle(ticket, outcome);
    } finally {
      // After what it told the memory (refused, proved): the next process's recall reads it.
      if (ticket.recalled) this.#tell((m) => m.release(ticket.recalled!));
    }
  }

  #settle(ticket: Ticket, outcome: ProofOutcome): void {
    // Of credentials replaced since: neither a proof nor a refusal of the new ones (R4); its probe
    // was no longer counted as running.
    if (ticket.generation !== this.#generation) return;
    if (ticket.probe) this.#probing = false;
    if (outcome === 'success' && ticket.epoch === this.#epoch) {
      const proving = !this.#proved;
      this.#proved = true;
      this.#provedAt = Date.now();
      this.#refusedUntil = 0;
      this.#refusedTimes = 0;
      this.#unansweredBefore = false;
      this.#lifted = false;
      this.#withheld = undefined;
      if (proving) this.#tellPlace((m, place) => m.proved(place));
    } else if (outcome === 'unanswered') {
      // The first such leg in a row may be a slow server's: one more handshake may try (R2: a waiter
      // takes it over); the second counts as a refusal, and every one after it until a success.
      if (!this.#proved && !ticket.counted) {
        if (this.#unansweredBefore) this.#refuse(true);
        this.#unansweredBefore = true;
      }
    } else if (outcome !== 'success' && outcome !== 'none' && !ticket.counted) {
      this.#refuse(outcome === 'refused');
    }
    this.#wake();
  }

  /**
   * The caller says the credentials may work now (the password was fixed on the server; the agent
   * holds the same ones, so nothing else would lift it): a refusal in force holds them back no
   * longer, and the next handshake tries them, one at a time as unproved. The count stays: refused
   * again, the wait doubles on (R4), and no lift shortens it until the credentials succeed. A
   * refusal memory's own record is its own to forget. Returns whether it lifted one.
   */
  liftRefusal(): boolean {
    // Once per run of refusals (review r60): a caller lifting on every poll would otherwise send a
    // refused password once per call. Refused again after it, the hold-back runs its course.
    if (this.#refusedUntil === 0 || this.#lifted) return false;
    this.#lifted = true;
    this.#refusedUntil = 0;
    this.#withheld = undefined;
    this.#wake();
    return true;
  }

  /**
   * The credentials were replaced (MultilegAgent.setCredentials): what was learnt of the old ones
   * goes, so a refusal of an old password does not keep the new one back, and the new ones start
   * unproved (one handshake at a time until one succeeds). Handshakes of the old ones still
   * running settle into nothing; those waiting for their outcome are handed a probe of the new ones.
   */
  reset(): void {
    this.#generation += 1;
    this.#epoch += 1;
    this.#proved = false;
    this.#provedAt = 0;
    this.#refusedUntil = 0;
    this.#refusedTimes = 0;
    this.#unansweredBefore = false;
    this.#lifted = false;
    this.#probing = false;
    this.#withheld = undefined;
    this.#wake();
  }

  /**
   * The agent was destroyed (its pools with it): requests waiting here for leave, or for the refusal
   * memory's recall, fail with `err` at once rather than at queueTimeout (R1), and none waits anew.
   */
  end(err: Error): void {
    if (this.#ended) return;
    this.#ended = err;
    this.#queue?.settleAll(undefined, err);
    this.#watchers?.settleAll(undefined, err);
    if (this.#recalling) for (const stop of [...this.#recalling]) stop(err);
  }

  /** `password`: what was refused derives from one (only then does the wait double). */
  #refuse(password = true): void {
    this.#epoch += 1;
    this.#withheld = undefined;
    // Proved until now: this may be one resource's refusal (an ACL), so one more handshake decides.
    if (this.#proved) this.#proved = false;
    // Handshakes already in flight when they were refused add nothing: the wait grows only when the
    // try made after it is refused too.
    else if (!this.refused) {
      // A ticket locks no account: a fixed keytab or a new kinit is tried again after the base wait.
      if (!password) {
        this.#refusedUntil = Date.now() + UNUSABLE_MEMORY_MS;
        return;
      }
      const wait = Math.min(UNUSABLE_MEMORY_MS * 2 ** this.#refusedTimes, MAX_REFUSED_MEMORY_MS);
      this.#refusedTimes += 1;
      const at = Date.now();
      this.#refusedUntil = at + wait;
      const refusal = { at, until: this.#refusedUntil, times: this.#refusedTimes };
      this.#tellPlace((m, place) => m.refused(place, refusal));
    }
  }

  /** Tells the refusal memory (if any) something of the place's current credentials (if with a password). */
  #tellPlace(tell: (memory: NonNullable<RefusalKeeping>['memory'], place: RefusalPlace) => void): void {
    const keeping = this.#keeping;
    if (!keeping) return;
    this.#tell((memory) => {
      const place = keeping.place();
      if (place) tell(memory, place);
    });
  }

  /** A caller's hook that throws breaks no handshake (RefusalMemory: its methods must not throw). */
  #tell(tell: (memory: NonNullable<RefusalKeeping>['memory']) => void): void {
    if (!this.#keeping) return;
    try {
      tell(this.#keeping.memory);
    } catch (err) {
      log.agent('refusal memory failed: %s', (err as Error).message);
    }
  }

  /** Hands the waiting handshakes what they may do now: all go, all go without, or one probes next. */
  #wake(): void {
    const queue = this.#queue;
    let handedOn = false;
    if (queue && queue.length > 0) {
      if (this.refused) queue.settleAll('refused');
      else if (this.#freshlyProved()) {
        while (queue.length > 0) queue.shift(new Ticket(false, this.#epoch, this.#generation));
      } else if (!this.#probing) {
        handedOn = this.#probing = queue.shift(new Ticket(true, this.#epoch, this.#generation)) !== undefined;
      }
    }
    // The probe the watchers waited for ended (watch): they go on, once — behind a probe handed on to
    // a waiter (its recall begins now, past their bound) as any request that meets a 401 waits.
    if ((!this.#probing || handedOn) && this.#watchers && this.#watchers.length > 0)
      this.#watchers.settleAll('decided');
  }
}

/** A {@link Waiter} that `signal` aborts (nothing does without one). */
export function signalWaiter(signal: AbortSignal | undefined): Waiter {
  let listener: (() => void) | undefined;
  return {
    sink: {
      onAbort(hook) {
        if (listener) signal?.removeEventListener('abort', listener);
        listener = undefined;
        if (!hook || !signal) return;
        const fire = () => {
          const reason = signal.reason as Error;
          if (typeof hook === 'function') hook(reason);
          else hook.callerAborted(reason);
        };
        if (signal.aborted) fire();
        else {
          listener = fire;
          signal.addEventListener('abort', listener, { once: true });
        }
      },
    },
  };
}
