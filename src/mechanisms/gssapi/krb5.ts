/**
 * The two libkrb5 calls GSS-API has no equivalent for. Dropping a service ticket from a credential
 * cache (`krb5_cc_remove_cred`), so that the next `gss_init_sec_context` asks the KDC for a fresh
 * one: needed when a server's key changed (a rotated keytab), as GSS-API keeps presenting the cached
 * ticket, sealed with the old key, until it expires (hours), and the server refuses each (M2, R4);
 * `kvno` after `kdestroy -p` would do the same from a shell. And asking whom a cache now belongs to
 * (`krb5_cc_get_principal`), without acquiring a credential: a session authenticated long ago
 * learns that a `kdestroy; kinit bob` took its principal's tickets away (S6).
 * Loaded lazily, through the koffi the GSS-API binding already loaded; Linux x86_64/arm64 layouts
 * (as ffi.ts).
 */
import type { GssFunctions } from './ffi.ts';

interface Krb5Functions {
  initContext: (...a: unknown[]) => unknown;
  freeContext: (...a: unknown[]) => unknown;
  ccResolve: (...a: unknown[]) => unknown;
  ccDefault: (...a: unknown[]) => unknown;
  ccCacheMatch: (...a: unknown[]) => unknown;
  ccClose: (...a: unknown[]) => unknown;
  ccGetPrincipal: (...a: unknown[]) => unknown;
  ccRemoveCred: (...a: unknown[]) => unknown;
  ccGetType: (...a: unknown[]) => unknown;
  ccGetName: (...a: unknown[]) => unknown;
  ccNewUnique: (...a: unknown[]) => unknown;
  ccInitialize: (...a: unknown[]) => unknown;
  ccCopyCreds: (...a: unknown[]) => unknown;
  ccDestroy: (...a: unknown[]) => unknown;
  parseName: (...a: unknown[]) => unknown;
  principalCompare: (...a: unknown[]) => unknown;
  freePrincipal: (...a: unknown[]) => unknown;
  getProfile: (...a: unknown[]) => unknown;
  profileRelease: (...a: unknown[]) => unknown;
  profileGetString: (...a: unknown[]) => unknown;
  profileReleaseString: (...a: unknown[]) => unknown;
  decodeString: (p: unknown) => string;
}

/** `KRB5_CC_NOTFOUND`: no such ticket in the cache (nothing to drop). */
const KRB5_CC_NOTFOUND = -1765328243;

let krb5: Krb5Functions | null | undefined;

function load(g: GssFunctions): Krb5Functions | null {
  if (krb5 !== undefined) return krb5;
  try {
    const k = g.koffi as unknown as {
      load(p: string): { func(d: string): (...a: unknown[]) => unknown };
      pointer(n: string, t: unknown): unknown;
      opaque(n: string): unknown;
      decode(p: unknown, t: string, len: number): unknown;
      struct(n: string, d: Record<string, string>): unknown;
    };
    const lib = k.load('libkrb5.so.3');
    k.pointer('krb5_context', k.opaque('_krb5_context'));
    k.pointer('krb5_ccache', k.opaque('_krb5_ccache'));
    k.pointer('krb5_principal', k.opaque('krb5_principal_data'));
    k.pointer('profile_t', k.opaque('_profile_t'));
    // krb5_creds as a match template: only client and server are read (flags 0); the rest stays zero.
    k.struct('krb5_creds_match', {
      magic: 'int32_t',
      client: 'krb5_principal',
      server: 'krb5_principal',
      rest: 'uint8_t[96]',
    });
    const f = (d: string) => lib.func(d);
    krb5 = {
      initContext: f('int32_t krb5_init_context(_Out_ krb5_context *ctx)'),
      freeContext: f('void krb5_free_context(krb5_context ctx)'),
      ccResolve: f('int32_t krb5_cc_resolve(krb5_context ctx, const char *name, _Out_ krb5_ccache *cc)'),
      ccDefault: f('int32_t krb5_cc_default(krb5_context ctx, _Out_ krb5_ccache *cc)'),
      ccCacheMatch: f('int32_t krb5_cc_cache_match(krb5_context ctx, krb5_principal client, _Out_ krb5_ccache *cc)'),
      ccClose: f('int32_t krb5_cc_close(krb5_context ctx, krb5_ccache cc)'),
      ccGetPrincipal: f('int32_t krb5_cc_get_principal(krb5_context ctx, krb5_ccache cc, _Out_ krb5_principal *p)'),
      ccRemoveCred: f(
        'int32_t krb5_cc_remove_cred(krb5_context ctx, krb5_ccache cc, int32_t flags, const krb5_creds_match *creds)',
      ),
      ccGetType: f('const char *krb5_cc_get_type(krb5_context ctx, krb5_ccache cc)'),
      ccGetName: f('const char *krb5_cc_get_name(krb5_context ctx, krb5_ccache cc)'),
      ccNewUnique: f(
        'int32_t krb5_cc_new_unique(krb5_context ctx, const char *type, const char *hint, _Out_ krb5_ccache *cc)',
      ),
      ccInitialize: f('int32_t krb5_cc_initialize(krb5_context ctx, krb5_ccache cc, krb5_principal p)'),
      ccCopyCreds: f('int32_t krb5_cc_copy_creds(krb5_context ctx, krb5_ccache from, krb5_ccache to)'),
      ccDestroy: f('int32_t krb5_cc_destroy(krb5_context ctx, krb5_ccache cc)'),
      parseName: f('int32_t krb5_parse_name(krb5_context ctx, const char *name, _Out_ krb5_principal *p)'),
      principalCompare: f('uint32_t krb5_principal_compare(krb5_context ctx, krb5_principal a, krb5_principal b)'),
      freePrincipal: f('void krb5_free_principal(krb5_context ctx, krb5_principal p)'),
      getProfile: f('int32_t krb5_get_profile(krb5_context ctx, _Out_ profile_t *profile)'),
      profileRelease: f('void profile_release(profile_t profile)'),
      profileGetString: f(
        'long profile_get_string(profile_t profile, const char *name, const char *sub, const char *subsub, const char *def, _Out_ void **out)',
      ),
      profileReleaseString: f('void profile_release_string(void *s)'),
      decodeString: (p) => k.decode(p, 'char', -1) as string,
    };
  } catch {
    krb5 = null; // no libkrb5 (another GSS-API): the ticket stays, as before
  }
  return krb5;
}

/** Where the credential's tickets are: what {@link GssClient} acquired from. */
export interface TicketCache {
  /** The store's `ccache`, when the agent has one of its own. */
  readonly ccache?: string;
  /** `negotiate.principal`: its cache in the collection. */
  readonly principal?: string;
  /** The principal the credential belongs to: the cache must still be theirs. */
  readonly client: string;
}

type Principal = (name: string) => unknown;

/**
 * Opens the cache `where` names and runs `use` on it once it is known to hold `where.client`'s
 * tickets; `otherwise` when it cannot be opened, holds no one's, or holds another principal's (a
 * kdestroy; kinit bob). Undefined when libkrb5 cannot be loaded (another GSS-API). Never throws.
 */
function inClientCache<T>(
  g: GssFunctions,
  where: TicketCache,
  otherwise: T,
  use: (k: Krb5Functions, ctx: unknown, cc: unknown, client: unknown, principal: Principal) => T,
): T | undefined {
  const k = load(g);
  if (!k) return undefined;
  const ctx: [unknown] = [null];
  if (k.initContext(ctx) !== 0) return undefined;
  const owned: unknown[] = [];
  const principal = (name: string): unknown => {
    const p: [unknown] = [null];
    if (k.parseName(ctx[0], name, p) !== 0) return null;
    owned.push(p[0]);
    return p[0];
  };
  const cc: [unknown] = [null];
  try {
    const client = principal(where.client);
    if (!client) return otherwise;
    const found = where.ccache
      ? k.ccResolve(ctx[0], where.ccache, cc)
      : where.principal
        ? k.ccCacheMatch(ctx[0], client, cc)
        : k.ccDefault(ctx[0], cc);
    if (found !== 0 || !cc[0]) return otherwise;
    const holder: [unknown] = [null];
    if (k.ccGetPrincipal(ctx[0], cc[0], holder) !== 0) return otherwise;
    owned.push(holder[0]);
    if (!k.principalCompare(ctx[0], holder[0], client)) return otherwise;
    return use(k, ctx[0], cc[0], client, principal);
  } catch {
    return otherwise;
  } finally {
    if (cc[0]) k.ccClose(ctx[0], cc[0]);
    for (const p of owned) k.freePrincipal(ctx[0], p);
    k.freeContext(ctx[0]);
  }
}

/**
 * Whether the cache the credential came from still holds `where.client`'s tickets: false after a
 * `kdestroy`, or a `kinit` / `kswitch` to another principal (S6); undefined when libkrb5 is not there.
 * Reads the cache (a file, a keyring, KCM's socket) on the calling thread; it does not ask the KDC.
 */
export function cacheHolds(g: GssFunctions, where: TicketCache): boolean | undefined {
  return inClientCache(g, where, false, () => true);
}

/**
 * Drops `client`'s tickets for `service` (`HTTP/host@REALM`; also its referral form `HTTP/host@`)
 * from the cache the credential came from. True when one was dropped. Never throws: a cache
 * that cannot be read, or that now holds another principal's tickets (a kdestroy; kinit bob), is
 * left alone.
 */
export function dropServiceTicket(g: GssFunctions, where: TicketCache, service: string): boolean {
  return (
    inClientCache(g, where, false, (k, ctx, cc, client, principal) => {
      let dropped = false;
      const at = service.lastIndexOf('@');
      for (const name of at < 0 ? [service] : [service, service.slice(0, at + 1)]) {
        const server = principal(name);
        if (!server) continue;
        const code = k.ccRemoveCred(ctx, cc, 0, { magic: 0, client, server, rest: new Uint8Array(96) });
        if (code === 0) dropped = true;
        else if (code !== KRB5_CC_NOTFOUND) break;
      }
      return dropped;
    }) ?? false
  );
}

/** A private in-memory copy of a FILE ccache (see {@link copyFileCache}). */
export interface CacheCopy {
  /** `MEMORY:…`: what `gss_acquire_cred_from` is given instead of the file. */
  readonly name: string;
  /** The file it was copied from. */
  readonly path: string;
  /** The file's state (its `stampOf`) just before it was copied. */
  readonly stamp: string;
}

/**
 * Copies `where.client`'s FILE ccache into a new MEMORY ccache of this process, with the file's
 * `stampOf` taken just before. MIT reads a FILE ccache whole, under a lock, several times in every
 * `gss_init_sec_context` (~60 system calls for a first step); a MEMORY one is read in place.
 * `'not-file'` when the cache is not a FILE one (a keyring, KCM, a DIR collection: left as they
 * are, never copied); `'not-held'` when it does not hold `where.client`'s tickets now (another
 * principal's, none, or gone: a kinit or kdestroy since, as {@link cacheHolds} would say);
 * undefined when it cannot be copied now, or libkrb5 is not there. Never throws.
 */
export function copyFileCache(
  g: GssFunctions,
  where: TicketCache,
  stampOf: (path: string) => string | undefined,
): CacheCopy | 'not-file' | 'not-held' | undefined {
  type Copied = CacheCopy | 'not-file' | 'not-held' | undefined;
  return inClientCache<Copied>(g, where, 'not-held', (k, ctx, cc, client) => {
    try {
      if (k.ccGetType(ctx, cc) !== 'FILE') return 'not-file';
      const path = k.ccGetName(ctx, cc) as string;
      // Before the copy: a change made while it is copied is then seen as one.
      const stamp = stampOf(path);
      if (stamp === undefined) return 'not-held';
      const mem: [unknown] = [null];
      if (k.ccNewUnique(ctx, 'MEMORY', null, mem) !== 0 || !mem[0]) return undefined;
      const name = `MEMORY:${k.ccGetName(ctx, mem[0]) as string}`;
      if (k.ccInitialize(ctx, mem[0], client) !== 0 || k.ccCopyCreds(ctx, cc, mem[0]) !== 0) {
        k.ccDestroy(ctx, mem[0]);
        return undefined;
      }
      // Closing a MEMORY handle keeps the cache (and its tickets) until it is destroyed.
      k.ccClose(ctx, mem[0]);
      return { name, path, stamp };
    } catch {
      return undefined; // the copy failed; whose the cache is was checked already
    }
  });
}

/** Destroys a MEMORY ccache {@link copyFileCache} made (its tickets freed). Never throws. */
export function destroyCacheCopy(g: GssFunctions, name: string): void {
  const k = load(g);
  if (!k) return;
  const ctx: [unknown] = [null];
  if (k.initContext(ctx) !== 0) return;
  try {
    const cc: [unknown] = [null];
    if (k.ccResolve(ctx[0], name, cc) === 0 && cc[0]) k.ccDestroy(ctx[0], cc[0]);
  } catch {
    // nothing to free
  } finally {
    k.freeContext(ctx[0]);
  }
}

/**
 * What krb5.conf's [libdefaults] says about looking a service's host up while its name is made
 * (`krb5_sname_to_principal`, which MIT's mechglue runs in every `gss_init_sec_context` call on a
 * host-based name): the raw `dns_canonicalize_hostname` (`true`, `false`, `fallback`), `rdns`
 * and `dns_lookup_realm` values, undefined where unset.
 */
export interface NameLookupProfile {
  readonly dnsCanonicalizeHostname?: string;
  readonly rdns?: string;
  readonly dnsLookupRealm?: string;
}

/** The profile last read, for KRB5_CONFIG as it was then, until when. */
let profileMemo: { config: string | undefined; until: number; profile: NameLookupProfile | undefined } | undefined;

/** How long a profile read serves: a krb5.conf edited under a running process is seen within this. */
export const PROFILE_REREAD_MS = 1_000;

/**
 * The name-lookup settings of the krb5 profile MIT itself reads (KRB5_CONFIG, include files and
 * all), through libkrb5; undefined when libkrb5 cannot be loaded (another GSS-API) or the profile
 * cannot be read. Read at most once every PROFILE_REREAD_MS per KRB5_CONFIG value: local files only.
 */
export function nameLookupProfile(g: GssFunctions, now = Date.now()): NameLookupProfile | undefined {
  const config = process.env.KRB5_CONFIG;
  if (profileMemo && profileMemo.config === config && now < profileMemo.until) return profileMemo.profile;
  const profile = readNameLookupProfile(g);
  profileMemo = { config, until: now + PROFILE_REREAD_MS, profile };
  return profile;
}

function readNameLookupProfile(g: GssFunctions): NameLookupProfile | undefined {
  const k = load(g);
  if (!k) return undefined;
  const ctx: [unknown] = [null];
  try {
    if (k.initContext(ctx) !== 0) return undefined;
    const profile: [unknown] = [null];
    if (k.getProfile(ctx[0], profile) !== 0) return undefined;
    try {
      const get = (name: string): string | undefined => {
        const out: [unknown] = [null];
        if (k.profileGetString(profile[0], 'libdefaults', name, null, null, out) !== 0 || !out[0]) return undefined;
        try {
          return k.decodeString(out[0]);
        } finally {
          k.profileReleaseString(out[0]);
        }
      };
      const [dnsCanonicalizeHostname, rdns, dnsLookupRealm] = [
        get('dns_canonicalize_hostname'),
        get('rdns'),
        get('dns_lookup_realm'),
      ];
      return {
        ...(dnsCanonicalizeHostname !== undefined ? { dnsCanonicalizeHostname } : {}),
        ...(rdns !== undefined ? { rdns } : {}),
        ...(dnsLookupRealm !== undefined ? { dnsLookupRealm } : {}),
      };
    } finally {
      k.profileRelease(profile[0]);
    }
  } catch {
    return undefined;
  } finally {
    if (ctx[0]) k.freeContext(ctx[0]);
  }
}
