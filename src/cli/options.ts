import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError } from '../errors.ts';
import type { MultilegAgentOptions } from '../options.ts';

/** What one `multileg` invocation asks for: the agent's options and the request to send. */
export interface CliRequest {
  readonly url: URL;
  readonly method: string;
  readonly headers: Record<string, string>;
  readonly body: Buffer | undefined;
  readonly http1: boolean;
  readonly include: boolean;
  readonly verbose: boolean;
  readonly fail: boolean;
  readonly output: string | undefined;
  readonly agent: MultilegAgentOptions;
}

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
};

export function program(): Command {
  return new Command('multileg')
    .description('curl-like HTTP client with NTLM, Negotiate/Kerberos and client certificates over HTTP/2 and HTTP/1.1')
    .argument('<url>', 'the URL to request')
    .option('-X, --request <method>', 'request method')
    .option(
      '-H, --header <header>',
      'extra request header "Name: value" (repeatable)',
      (v, acc: string[]) => [...acc, v],
      [],
    )
    .option('-d, --data <data>', 'request body; @file reads a file (implies POST)')
    .option(
      '-u, --user <user:password>',
      'credentials for NTLM (and Negotiate without a ticket): DOMAIN\\user:password; the password may come from MULTILEG_PASSWORD instead',
    )
    .option('--schemes <list>', 'schemes to use, strongest first (default Negotiate,NTLM,Digest,Basic)')
    .option('--spn <spn>', 'Kerberos service principal (default HTTP@host)')
    .option('--delegate', 'allow Kerberos credential delegation')
    .option(
      '--ccache <name>',
      'Kerberos credential cache for this run (e.g. FILE:/tmp/krb5cc_svc), instead of KRB5CCNAME',
    )
    .option('--keytab <file>', 'client keytab: get Kerberos tickets from it (with --principal for a keytab of several)')
    .option('--principal <name>', 'Kerberos client principal (user@REALM) to use')
    .option('--cacert <file>', 'CA certificate(s) to trust (PEM)')
    .option('-k, --insecure', 'do not verify the server certificate')
    .option('--cert <file>', 'client certificate (PEM) for Transport challenges')
    .option('--key <file>', 'private key (PEM) of --cert')
    .option('--http1.1', 'use HTTP/1.1 only')
    .option('-i, --include', 'print the response status line and headers')
    .option('-v, --verbose', 'report sessions and handshakes on stderr (never secrets)')
    .option('-f, --fail', 'exit with code 22 on HTTP responses >= 400')
    .option('-o, --output <file>', 'write the body to a file')
    .addOption(new Option('--max-legs <n>', 'maximum legs per handshake').argParser(positiveInt))
    .addOption(new Option('--timeout <ms>', 'handshake timeout in ms').argParser(positiveInt))
    .showHelpAfterError()
    .exitOverride();
}

/** Splits `DOMAIN\user:password` at the first colon; the password may come from the environment. */
function parseUser(user: string, env: NodeJS.ProcessEnv): { username: string; password: string } {
  const colon = user.indexOf(':');
  if (colon >= 0) return { username: user.slice(0, colon), password: user.slice(colon + 1) };
  const password = env.MULTILEG_PASSWORD;
  if (password === undefined)
    throw new ConfigError(`no password for ${user}: write -u user:password or set MULTILEG_PASSWORD`);
  return { username: user, password };
}

/** A keytab path becomes a `FILE:` name; `FILE:`/`MEMORY:`... names pass through. */
const keytabName = (v: string) => (/^[A-Z]+:/.test(v) ? v : `FILE:${v}`);

const readArg = (v: string) => (v.startsWith('@') ? readFileSync(v.slice(1)) : Buffer.from(v));

/** Turns command-line arguments into a request; throws commander's or a ConfigError on bad input. */
export function parseCli(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): CliRequest {
  const cmd = program();
  cmd.parse(argv as string[], { from: 'user' });
  const o = cmd.opts();
  let url: URL;
  try {
    url = new URL(cmd.args[0]!);
  } catch {
    throw new ConfigError(`not a URL: ${cmd.args[0]}`);
  }
  const headers: Record<string, string> = {};
  for (const h of o.header as string[]) {
    const i = h.indexOf(':');
    if (i <= 0) throw new ConfigError(`a header must look like "Name: value", got ${JSON.stringify(h.split(':')[0])}`);
    headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
  }
  const body = o.data !== undefined ? readArg(o.data as string) : undefined;
  if ((o.cert === undefined) !== (o.key === undefined)) throw new ConfigError('--cert and --key go together');
  const connect = {
    ...(o.cacert ? { ca: readFileSync(o.cacert as string) } : {}),
    ...(o.insecure ? { rejectUnauthorized: false } : {}),
  };
  const agent: MultilegAgentOptions = {
    connect,
    // curl's rule: credentials go to the origin named on the command line (S1).
    trustedOrigins: [new URL(url).origin],
    ...(o.user ? { credentials: parseUser(o.user as string, env) } : {}),
    ...(o.schemes ? { schemes: (o.schemes as string).split(',').map((s) => s.trim()) } : {}),
    ...(o.spn || o.delegate || o.ccache || o.keytab || o.principal
      ? {
          negotiate: {
            ...(o.spn ? { spn: o.spn as string } : {}),
            ...(o.delegate ? { delegate: true } : {}),
            ...(o.ccache ? { ccache: o.ccache as string } : {}),
            ...(o.keytab ? { keytab: keytabName(o.keytab as string) } : {}),
            ...(o.principal ? { principal: o.principal as string } : {}),
          },
        }
      : {}),
    ...(o.cert
      ? { clientCertificate: { cert: readFileSync(o.cert as string), key: readFileSync(o.key as string) } }
      : {}),
    limits: {
      ...(o.maxLegs ? { maxLegs: o.maxLegs as number } : {}),
      ...(o.timeout ? { handshakeTimeout: o.timeout as number } : {}),
    },
  };
  return {
    url,
    method: ((o.request as string | undefined) ?? (body ? 'POST' : 'GET')).toUpperCase(),
    headers,
    body,
    http1: Boolean(o['http1.1']),
    include: Boolean(o.include),
    verbose: Boolean(o.verbose),
    fail: Boolean(o.fail),
    output: o.output as string | undefined,
    agent,
  };
}
