/**
 * Actionable Kerberos / GSS-API errors: the text GSS-API gives (via the `kerberos` addon) is mapped to a
 * typed error with a stable code whose message names the cause and the fix. GSS messages carry names
 * (principals, ccache paths), never keys or tokens, so the original text is kept as `gssMessage`.
 */
import { accessSync, constants } from 'node:fs';
import { MechanismError, MultilegError, type MultilegErrorCode } from '../../errors.ts';
import { type KerberosNames, ORIGIN_KERBEROS_NAMES } from './mechanism.ts';

/** Base class of the typed Kerberos failures. */
export class KerberosError extends MultilegError {
  /** The GSS-API message as reported (major: minor), for diagnostics; '' where GSS-API said nothing. */
  readonly gssMessage: string;
  /**
   * The fix alone, as the message words it after the cause (`run kinit …`): for a line that says
   * the cause already (doctor's check) and wants only what to do.
   */
  readonly fix: string;
  /**
   * The message is `Negotiate: <what>: <fix> [GSS: <gssMessage>]`, composed here once: doctor reads
   * `fix`, and {@link fallbackReasonOf} / {@link withoutGssDetail} split the message on that shape.
   * No GSS text (undefined): no `[GSS: …]`.
   */
  constructor(
    code: MultilegErrorCode,
    what: string,
    fix: string,
    gssMessage: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(
      code,
      `Negotiate: ${what}: ${fix}${gssMessage === undefined ? '' : ` [GSS: ${gssMessage}]`}`,
      // Only the cause: the subclasses' other options (names, ccache, …) are the message's.
      options?.cause !== undefined ? { cause: options.cause } : undefined,
    );
    this.gssMessage = gssMessage ?? '';
    this.fix = fix;
  }
}

/** The options' prefix a constructor's message names (`negotiate`, or a proxy's: H5). */
const optionsOf = (options: { names?: KerberosNames | undefined } | undefined): string =>
  (options?.names ?? ORIGIN_KERBEROS_NAMES).options;

/** No usable Kerberos credentials (no ccache / no TGT / principal not in the cache). */
export class KerberosNoTicketError extends KerberosError {
  /**
   * `fallback`: whether credentials would make an NTLM fallback (not towards a proxy, nor with
   * `ntlmFallback: false`). `envKeytab`: the client keytab KRB5_CLIENT_KTNAME names, which MIT tried
   * and got nothing from (that file is the fix). Still "no ticket" (R4: asked again after
   * TICKET_RECHECK_MS, a fixed file or a kinit used at once; review r66).
   */
  constructor(
    gssMessage: string,
    principal?: string,
    options?: { cause?: unknown; fallback?: boolean; envKeytab?: string; names?: KerberosNames; ccache?: string },
  ) {
    const names = options?.names ?? ORIGIN_KERBEROS_NAMES;
    // A cache given in the options (negotiate.ccache): a plain kinit fills the default one, not it.
    // (Not with a principal: kinit -c into a FILE cache would replace the tickets of the one there.)
    const kinit = options?.ccache ? `kinit -c ${options.ccache}` : 'kinit';
    const what = options?.envKeytab
      ? ` from the client keytab ${options.envKeytab}`
      : principal
        ? ` for ${principal}`
        : '';
    // With a principal chosen, "or pass principal" would name what was done: its kinit is the fix.
    const fix = `${
      options?.envKeytab
        ? 'check the path, or get a ticket otherwise (kinit)'
        : principal
          ? `run kinit ${principal}`
          : // A job with no one to type kinit's password (CI, cron) gets its tickets from a client keytab.
            `run ${kinit}, give a client keytab (${names.options}.keytab), or pass ${names.principal}`
    }${options?.fallback === false ? '' : ` (or give ${names.credentials} for the NTLM fallback)`}`;
    super('MULTILEG_KRB_NO_TICKET', `no Kerberos ticket${what}`, fix, gssMessage, options);
  }
}

/** The TGT (or the service ticket) has expired. */
export class KerberosTicketExpiredError extends KerberosError {
  /** `ccache`: the cache given in the options (negotiate.ccache), which a plain kinit does not fill. */
  constructor(gssMessage: string, options?: { cause?: unknown; ccache?: string }) {
    const c = options?.ccache ? ` -c ${options.ccache}` : '';
    const fix = `run kinit${c} again (or renew it with kinit -R${c})`;
    super('MULTILEG_KRB_TICKET_EXPIRED', 'the Kerberos ticket has expired', fix, gssMessage, options);
  }
}

/** No KDC of the realm answered (or none is configured). */
export class KerberosKdcUnreachableError extends KerberosError {
  constructor(gssMessage: string, options?: { cause?: unknown }) {
    const fix = "check the realm's kdc entries in krb5.conf (KRB5_CONFIG), DNS, and the network/firewall to the KDC";
    super('MULTILEG_KRB_KDC_UNREACHABLE', 'cannot reach a Kerberos KDC', fix, gssMessage, options);
  }
}

/** The KDC does not know the service principal the client asked a ticket for. */
export class KerberosUnknownServiceError extends KerberosError {
  readonly spn: string;
  /** `given`: the SPN is negotiate.spn's, not one made from the URL's host (the fix is then that option's value). */
  constructor(gssMessage: string, spn: string, options?: { cause?: unknown; given?: boolean; names?: KerberosNames }) {
    const o = optionsOf(options);
    // S1: an agent's negotiate.spn and canonicalizeHost need trustedOrigins (a TrustRequiredError
    // without it): said here, so that the fix is one step, not a second error. A proxy's need none.
    const trust =
      o === ORIGIN_KERBEROS_NAMES.options
        ? ` (${o}.canonicalizeHost and ${o}.spn need trustedOrigins, the origins their ticket may go to)`
        : '';
    const fix = options?.given
      ? `check the SPN given in ${o}.spn against the server's keytab name (klist -k on the server)`
      : `check the SPN (the server's keytab name; a CNAME may need ${o}.canonicalizeHost, a non-default port ${o}.includePort) or pass ${o}.spn${trust}`;
    const what = `the KDC does not know the service principal ${options?.given ? '' : 'for '}${spn}`;
    super('MULTILEG_KRB_UNKNOWN_SPN', what, fix, gssMessage, options);
    this.spn = spn;
  }
}

/** Client and KDC/server clocks differ by more than the allowed skew (5 minutes by default). */
export class KerberosClockSkewError extends KerberosError {
  constructor(gssMessage: string, options?: { cause?: unknown }) {
    const fix = "sync this machine's clock with the KDC (NTP)";
    super('MULTILEG_KRB_CLOCK_SKEW', 'Kerberos clock skew too great', fix, gssMessage, options);
  }
}

/** A client ticket from another realm than the server's, with no cross-realm trust to the server's realm. */
export class KerberosWrongRealmError extends KerberosError {
  readonly spn: string;
  constructor(gssMessage: string, spn: string, options?: { cause?: unknown; names?: KerberosNames }) {
    const o = optionsOf(options);
    const fix = `kinit as a principal of the server's realm (or pass ${o}.principal / ${o}.ccache), or ask for a cross-realm trust`;
    const what = `the ticket is for another realm than ${spn}'s, and that realm does not trust it`;
    super('MULTILEG_KRB_WRONG_REALM', what, fix, gssMessage, options);
    this.spn = spn;
  }
}

/**
 * The Kerberos ticket at hand is another user's than the agent's `credentials` name: using it would
 * run the request as someone else than the caller said (the ambient ticket of whoever ran kinit).
 */
export class KerberosOtherPrincipalError extends KerberosError {
  /** The principal whose ticket is at hand. */
  readonly ticket: string;
  /** The user the credentials name. */
  readonly user: string;
  constructor(ticket: string, user: string, names: KerberosNames = ORIGIN_KERBEROS_NAMES) {
    const fix = `kinit as ${user}, or pass ${names.options}.principal to use this ticket on purpose`;
    // No GSS-API failure: the ticket was fine, its owner is not the one named.
    super(
      'MULTILEG_KRB_OTHER_PRINCIPAL',
      `the Kerberos ticket is ${ticket}'s, not ${user}'s (${names.credentials})`,
      fix,
      undefined,
    );
    this.ticket = ticket;
    this.user = user;
  }
}

/**
 * The client keytab gave no ticket (missing file, no key for the principal), or, `expired`, gave no
 * new one when the ticket it gave expired (file gone, key changed in the KDC, KDC out of reach), or,
 * `stale`, its key is older than the KDC's (the KDC's answer did not decrypt with it, or the KDC
 * refused its pre-authentication: a new password or `cpw -randkey` since the keytab was made).
 * `principal`: negotiate.principal, named as the caller gave it (GSS-API's own text may name it
 * otherwise: gss-ntlmssp's `REALM\user`); "pass negotiate.principal" only when it was not.
 */
export class KerberosKeytabError extends KerberosError {
  /** The keytab's key is older than the KDC's (a key version behind): a new keytab is the fix. */
  readonly stale: boolean;
  constructor(
    gssMessage: string,
    keytab: string,
    options?: {
      cause?: unknown;
      expired?: boolean;
      stale?: boolean;
      principal?: string | undefined;
      names?: KerberosNames | undefined;
    },
  ) {
    const principal = options?.principal;
    const o = optionsOf(options);
    const who = principal ?? '<the principal klist -k names>';
    const [what, fix] = options?.stale
      ? // The same words with or without a principal given: the cause is the key, not the name.
        [
          `no ticket${principal ? ` for ${principal}` : ''} from the client keytab ${keytab}: its key is older than the KDC's (the key changed in the KDC since the keytab was made)`,
          `compare the kvno of \`klist -k ${keytab.replace(/^FILE:/, '')}\` with \`kvno ${who}\`, then export the key again (kadmin ktadd; ktpass on Windows)`,
        ]
      : options?.expired
        ? // GSS-API says only "Ticket expired": kinit is no fix here, the keytab renews the ticket.
          [
            `the ticket${principal ? ` of ${principal}` : ''} expired and no new one came from the client keytab ${keytab}`,
            "check the path, that it holds the principal's current keys (klist -k; a key changed in the KDC needs a new keytab) and that the KDC is reachable",
          ]
        : [
            `no ticket${principal ? ` for ${principal}` : ''} from the client keytab ${keytab}`,
            `check the path and that it holds the principal's keys (klist -k)${principal ? '' : `, or pass ${o}.principal`}`,
          ];
    super('MULTILEG_KRB_KEYTAB', what, fix, gssMessage, options);
    this.stale = options?.stale === true;
  }
}

/**
 * The credentials cache cannot be used (MIT: "Credentials cache permissions incorrect"): read or
 * written — a ticket got from a client keytab (KRB5_CLIENT_KTNAME) is stored there, and KRB5CCNAME
 * points at a read-only place or another user's file (a container's read-only mount, say); a file
 * this user cannot read, a KRB5CCNAME naming a directory, a KCM daemon that refuses this user fail
 * with the same words. `ccache`: which cache, as named (negotiate.ccache, else KRB5CCNAME), when known.
 */
export class KerberosCcacheError extends KerberosError {
  constructor(gssMessage: string, ccache?: string, options?: { cause?: unknown; names?: KerberosNames }) {
    const o = optionsOf(options);
    const fix = `make KRB5CCNAME name a file this user can read and write (in a container, on an emptyDir or tmpfs), or use ${o}.keytab, which keeps its tickets in memory`;
    const what = `the Kerberos credentials cache${ccache ? ` ${ccache}` : ''} cannot be used (read or written) by this user (a read-only place, another user's file, a directory, or a KCM daemon that refuses it)`;
    super('MULTILEG_KRB_CCACHE', what, fix, gssMessage, options);
  }
}

/** Why Kerberos was skipped for NTLM (reported by the handshake, never a secret). */
export interface NegotiateFallbackReason {
  /** The code of the Kerberos error that would have been thrown without a password. */
  readonly code: string;
  /** Its cause in a few words, e.g. `the Kerberos ticket has expired`. */
  readonly message: string;
}

/** Kerberos failures a ticket (kinit) fixes: none there, or one that expired; not an unknown SPN, a KDC out of reach, a clock. */
const TICKET_FIXES: ReadonlySet<string> = new Set(['MULTILEG_KRB_NO_TICKET', 'MULTILEG_KRB_TICKET_EXPIRED']);

/**
 * How long "no Kerberos ticket" / "ticket expired" is remembered (R4), by an origin and by the
 * Negotiate mechanism that falls back to NTLM meanwhile. Short, because a kinit mends it and callers
 * (curl, .NET) expect the new ticket on the next request; and cheap to ask again: GSS-API answers it
 * from the ccache, with no KDC and no extra wire request (the 401 is the same either way). Still
 * one request a second at most asks, not every waiter.
 */
export const TICKET_RECHECK_MS = 1_000;

/** Whether the Kerberos failure of error code `code` is mended by getting a ticket (kinit). */
export const ticketFixes = (code: string | undefined): boolean => code !== undefined && TICKET_FIXES.has(code);

/**
 * A Negotiate error's message without GSS-API's own text (the ` [GSS: …]` it ends with): the cause
 * and the fix, for a line where GSS-API's words are noise.
 */
export function withoutGssDetail(message: string): string {
  return message.replace(/ \[GSS: .*$/, '');
}

/** The cause part of a Negotiate error's message (without the fix and the GSS text). */
export function fallbackReasonOf(err: MultilegError): NegotiateFallbackReason {
  const cause = withoutGssDetail(err.message.replace(/^Negotiate: /, '')).split(/: /)[0]!;
  return { code: err.code, message: cause };
}

function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

const NO_TICKET =
  /No Kerberos credentials available|SPNEGO cannot find mechanisms to negotiate|No credentials cache found|Can't find client principal|Matching credential not found|No credentials were supplied.*(?:not found|No such file)/i;
const EXPIRED = /Ticket expired|credential\(?s\)? (?:have|has) expired/i;
const KDC = /Cannot contact any KDC|Cannot find KDC|Cannot resolve network address for KDC|Cannot reach any KDC/i;
const UNKNOWN_SPN = /not found in Kerberos database|Server not found in Kerberos database|Server principal unknown/i;
const SKEW = /Clock skew too great/i;
/** MIT's KRB5_FCC_PERM: the FILE cache (KRB5CCNAME) is not this user's to write. */
const CCACHE = /Credentials cache permissions incorrect/i;

/**
 * The client keytab MIT reads by itself when there is no ticket (KRB5_CLIENT_KTNAME), with why it
 * gave none where that shows (it cannot be read): named in "no ticket" rather than kinit alone.
 */
function envKeytab(): string | undefined {
  const name = process.env.KRB5_CLIENT_KTNAME;
  if (!name) return undefined;
  const path = name.replace(/^(FILE|WRFILE):/, '');
  let why = '';
  if (path.startsWith('/'))
    try {
      accessSync(path, constants.R_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      why = code === 'ENOENT' ? ' (no such file)' : ` (it cannot be read by this user: ${code})`;
    }
  return `${name}${why}, named by KRB5_CLIENT_KTNAME`;
}
/**
 * A client key older than the KDC's (MIT: the AS-REP does not decrypt with it, or the KDC refused
 * the pre-authentication made with it; Windows: KDC_ERR_PREAUTH_FAILED): with a client keytab, the
 * keytab is stale.
 */
const STALE_KEY = /Decrypt integrity check failed|Preauthentication failed|Password incorrect/i;
/** The client's KDC has no cross-realm key for the server's realm (MIT: `krbtgt/SERVER@CLIENT` unknown). */
const WRONG_REALM = /Server krbtgt\/[^@\s]+@\S+ not found in Kerberos database/i;
/** A principal's realm; '' when it names none (`svc`, or gss-ntlmssp's `REALM\user`). */
const realmOf = (principal: string | undefined): string => {
  const at = principal?.lastIndexOf('@') ?? -1;
  return at < 0 ? '' : principal!.slice(at + 1);
};

/** The GSS-API binding names both principals: a "server not found" across realms is a missing trust. */
function acrossRealms(err: unknown): boolean {
  const e = err as { clientPrincipal?: string; servicePrincipal?: string };
  const client = realmOf(e.clientPrincipal);
  const service = realmOf(e.servicePrincipal);
  return client !== '' && service !== '' && client !== service;
}

/**
 * Maps an error thrown by the `kerberos` addon to a typed error. Unknown texts become a
 * {@link MechanismError} that still carries the GSS text. Never includes tokens (the addon's messages
 * have none).
 */
export function mapGssError(
  err: unknown,
  ctx: {
    spn: string;
    principal?: string;
    keytab?: string;
    ccache?: string;
    fallback?: boolean;
    spnGiven?: boolean;
    /** The options and credentials the messages name (a proxy's: H5); the agent's own by default. */
    naming?: KerberosNames;
  },
): MultilegError {
  if (err instanceof MultilegError) return err;
  const msg = messageOf(err).replace(/\s+/g, ' ').trim();
  const cause = { cause: err };
  // Those whose fix is an option or the credentials name them as this Negotiate's (a proxy's: H5).
  const named = ctx.naming ? { ...cause, names: ctx.naming } : cause;
  if (SKEW.test(msg)) return new KerberosClockSkewError(msg, cause);
  // With a client keytab the agent renews its tickets itself: an expired one means the keytab failed.
  const keytabOf = { ...named, principal: ctx.principal };
  if (ctx.keytab && EXPIRED.test(msg)) return new KerberosKeytabError(msg, ctx.keytab, { ...keytabOf, expired: true });
  if (EXPIRED.test(msg))
    return new KerberosTicketExpiredError(msg, ctx.ccache ? { ...cause, ccache: ctx.ccache } : cause);
  // Named as given (the agent's negotiate.ccache), else as the environment names it (a message only: never read to choose one).
  if (CCACHE.test(msg)) return new KerberosCcacheError(msg, ctx.ccache ?? process.env.KRB5CCNAME, named);
  if (KDC.test(msg)) return new KerberosKdcUnreachableError(msg, cause);
  if (WRONG_REALM.test(msg) || (UNKNOWN_SPN.test(msg) && acrossRealms(err)))
    return new KerberosWrongRealmError(msg, ctx.spn, named);
  if (UNKNOWN_SPN.test(msg))
    return new KerberosUnknownServiceError(msg, ctx.spn, ctx.spnGiven ? { ...named, given: true } : named);
  if (ctx.keytab && STALE_KEY.test(msg)) return new KerberosKeytabError(msg, ctx.keytab, { ...keytabOf, stale: true });
  if (ctx.keytab && NO_TICKET.test(msg)) return new KerberosKeytabError(msg, ctx.keytab, keytabOf);
  const noTicket = {
    ...named,
    ...(ctx.fallback === false ? { fallback: false } : {}),
    ...(ctx.ccache ? { ccache: ctx.ccache } : {}),
  };
  // MIT tried the client keytab KRB5_CLIENT_KTNAME names, and got nothing from it: that file is the fix, not kinit.
  if (NO_TICKET.test(msg)) {
    const fromEnv = envKeytab();
    return new KerberosNoTicketError(msg, ctx.principal, fromEnv ? { ...noTicket, envKeytab: fromEnv } : noTicket);
  }
  // MIT, when `principal` names a client that has no cache in the collection (SPNEGO), or, for raw
  // Kerberos, whose tickets are not in the cache named (negotiate.ccache, or a FILE default cache).
  if (
    ctx.principal &&
    /A required argument is missing|Principal in credential cache does not match desired name/.test(msg)
  ) {
    // With a keytab, its principal's key is what is missing, not a kinit (review r38).
    if (ctx.keytab) return new KerberosKeytabError(msg, ctx.keytab, keytabOf);
    return new KerberosNoTicketError(msg, ctx.principal, noTicket);
  }
  return new MechanismError('Negotiate', `GSS-API failure: ${msg}`, cause);
}
