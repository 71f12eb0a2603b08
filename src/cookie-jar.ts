/**
 * The agent's cookie jar (the `cookies` option, {@link CookieStore}) as every sender uses it: the
 * sessions' legs and fast path, and upgrades. Asked per leg, told every response head.
 */
import { CookieStoreError } from './errors.ts';
import type { CookieStore } from './options.ts';

/** The jar's Cookie header for `url` (undefined: none), or a CookieStoreError when it throws. */
export function jarCookie(jar: CookieStore, url: string): string | undefined | CookieStoreError {
  try {
    return jar.cookieHeader(url) || undefined;
  } catch (err) {
    return new CookieStoreError(err);
  }
}

/** A response head's Set-Cookie, to the jar: its failure is not the response's (a process warning). */
export function tellJar(jar: CookieStore, url: string, headers: Readonly<Record<string, unknown>>): void {
  const values = headers['set-cookie'] as string | string[] | undefined;
  if (values === undefined) return;
  try {
    jar.setCookies(url, typeof values === 'string' ? [values] : values);
  } catch (err) {
    process.emitWarning(
      `the cookies option's setCookies() threw (${(err as Error)?.name ?? typeof err}); the response goes on without its cookies stored`,
      { code: 'MULTILEG_COOKIE_STORE_THREW' },
    );
  }
}

/** The caller's own Cookie after the jar's, in one header (RFC 6265 §5.4), as curl puts -b's. */
export const withJarCookie = (own: string | string[] | undefined, jar: string): string =>
  own === undefined ? jar : [jar, own].flat().join('; ');
