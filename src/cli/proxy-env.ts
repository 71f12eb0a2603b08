/**
 * The proxy environment variables as curl reads them, written into this process's environment,
 * which the agent then reads (HTTPS_PROXY for https:// URLs alone, HTTP_PROXY for http://, NO_PROXY).
 */

/** The variables curl reads for proxies (lib/url.c's detect_proxy, lib/noproxy.c). */
const PROXY_VARIABLES = ['https_proxy', 'HTTPS_PROXY', 'http_proxy', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY'];

/**
 * The variables curlProxyEnvironment filled in from `all_proxy`/`ALL_PROXY`, and which of those
 * two the user set: the agent's messages name the variable it read (`https_proxy`), which the
 * user never set. Set once per process (the command's), before any message is made.
 */
let copied: { readonly from: string; readonly into: ReadonlySet<string> } | undefined;

/**
 * curl's rules where they differ from the agent's: no upper-case `HTTP_PROXY` (under CGI it is the
 * request's own `Proxy` header, "httpoxy"); an empty variable is none (curl's getenv), so it does
 * not hide its other spelling; and `all_proxy`, then `ALL_PROXY`, for a URL scheme whose own
 * variables name no proxy. `NO_PROXY` applies to it as to the others.
 */
export function curlProxyEnvironment(env: NodeJS.ProcessEnv): void {
  delete env.HTTP_PROXY;
  for (const name of PROXY_VARIABLES) if (env[name] === '') delete env[name];
  copied = undefined;
  const all = env.all_proxy ?? env.ALL_PROXY;
  if (all === undefined) return;
  const into = new Set<string>();
  if (env.https_proxy === undefined && env.HTTPS_PROXY === undefined) into.add('https_proxy');
  if (env.http_proxy === undefined) into.add('http_proxy');
  for (const name of into) env[name] = all;
  if (into.size > 0) copied = { from: env.all_proxy !== undefined ? 'all_proxy' : 'ALL_PROXY', into };
}

/**
 * `message` (an agent's, already in the command's words) with the proxy variables named as the
 * user set them: `all_proxy`/`ALL_PROXY` where curlProxyEnvironment copied it into `https_proxy`
 * or `http_proxy` (H5: "unset https_proxy" would not help, nor would checking it).
 */
export function realProxyVariables(message: string): string {
  if (!copied) return message;
  const { from, into } = copied;
  const real = (name: string) => (into.has(name) ? from : name);
  // The generic hint, "HTTPS_PROXY / http_proxy": the variables that name the proxies here.
  const generic = [...new Set([into.has('https_proxy') ? from : 'HTTPS_PROXY', real('http_proxy')])].join(' / ');
  return (
    message
      .replace(/\bHTTPS_PROXY ?\/ ?(?:HTTP_PROXY|http_proxy)\b/g, generic)
      .replace(/\bhttps?_proxy\b/g, real)
      // One variable copied into both is named once: "ALL_PROXY and ALL_PROXY", "unset ALL_PROXY or ALL_PROXY".
      .replace(new RegExp(`\\b${from} (?:and|or) ${from}\\b`, 'g'), from)
  );
}
