/**
 * The proxy environment variables as curl reads them, written into this process's environment,
 * which the agent (undici's rules: HTTPS_PROXY / HTTP_PROXY / NO_PROXY) then reads.
 */

/** The variables curl reads for proxies (lib/url.c's detect_proxy, lib/noproxy.c). */
const PROXY_VARIABLES = ['https_proxy', 'HTTPS_PROXY', 'http_proxy', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY'];

/**
 * curl's rules where they differ from undici's: no upper-case `HTTP_PROXY` (under CGI it is the
 * request's own `Proxy` header, "httpoxy"); an empty variable is none (curl's getenv), so it does
 * not hide its other spelling; and `all_proxy`, then `ALL_PROXY`, for a URL scheme whose own
 * variables name no proxy. `NO_PROXY` applies to it as to the others.
 */
export function curlProxyEnvironment(env: NodeJS.ProcessEnv): void {
  delete env.HTTP_PROXY;
  for (const name of PROXY_VARIABLES) if (env[name] === '') delete env[name];
  const all = env.all_proxy ?? env.ALL_PROXY;
  if (all === undefined) return;
  if (env.https_proxy === undefined && env.HTTPS_PROXY === undefined) env.https_proxy = all;
  if (env.http_proxy === undefined) env.http_proxy = all;
}
