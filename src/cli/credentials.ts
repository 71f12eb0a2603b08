/**
 * Where the CLI's password comes from, in curl's order of habits: `-u user:password`, then
 * MULTILEG_PASSWORD, `--password-stdin`, a prompt on a terminal; or `--netrc` / `--netrc-file`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { ConfigError } from '../errors.ts';
import type { Credentials } from '../mechanisms/types.ts';
import { homeDir } from './dirs.ts';
import { undoOnSignal } from './exit.ts';
import { EXIT } from './explain.ts';
import { type CliRequest, UsageError, type UserArg, unreadable } from './options.ts';

export interface CredentialSources {
  readonly user: UserArg | undefined;
  readonly passwordStdin: boolean;
  /** The netrc file (undefined: $NETRC, else ~/.netrc) and whether a missing one is fine; undefined: no netrc. */
  readonly netrc: CliRequest['netrc'];
  readonly host: string;
  readonly env: NodeJS.ProcessEnv;
  readonly stdin: NodeJS.ReadStream;
  readonly stderr: NodeJS.WriteStream;
  /** Told when the credentials come from a netrc entry: what that file says of other hosts. */
  readonly fromNetrc?: ((found: NetrcFound) => void) | undefined;
  /** --negotiate alone: a ticket needs no password, so a missing one names `-u :` too. */
  readonly negotiateOnly?: boolean | undefined;
}

/**
 * Credentials a netrc file gave for the URL's host, and what the same file says of other hosts.
 * curl's netrc is per host (CVE-2024-11053, CVE-2025-0167: a redirect's host whose own entry has no
 * password, or an empty `default`, got the first host's password); the command has one set of
 * credentials, so where the file gives a host other credentials, or none, these do not go there.
 */
export interface NetrcFound {
  /** The file the credentials came from. */
  readonly file: string;
  /**
   * Whether the file's entry for `host` (its `machine`, else `default`) differs from the one the
   * credentials came from. False where no entry applies to it: the file says nothing of that host.
   */
  readonly namesOther: (host: string) => boolean;
}

/** A netrc entry (`machine host login user password secret`, or `default …`). */
interface NetrcEntry {
  machine: string | undefined;
  login?: string;
  password?: string;
}

/** Parses netrc text (tokens separated by white space; `macdef` bodies end at a blank line). */
export function parseNetrc(text: string): NetrcEntry[] {
  const entries: NetrcEntry[] = [];
  const lines = text.split(/\r?\n/);
  const tokens: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/^\s*#.*$/, '');
    const words = line.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? [];
    if (words[0] === 'macdef') {
      while (i + 1 < lines.length && lines[i + 1]!.trim() !== '') i++;
      continue;
    }
    for (const w of words) tokens.push(w.startsWith('"') ? w.slice(1, -1).replace(/\\(.)/g, '$1') : w);
  }
  let current: NetrcEntry | undefined;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t === 'machine' || t === 'default') {
      current = { machine: t === 'default' ? undefined : tokens[++i] };
      entries.push(current);
    } else if (current && (t === 'login' || t === 'password' || t === 'account')) {
      const value = tokens[++i];
      if (t === 'login' && value !== undefined) current.login = value;
      if (t === 'password' && value !== undefined) current.password = value;
    }
  }
  return entries;
}

/**
 * The entry that applies to `host`: its `machine` entry, else the `default` one (curl's order); with
 * `login` (the URL's user), only an entry of that login, as curl's.
 */
function entryFor(entries: readonly NetrcEntry[], host: string, login?: string): NetrcEntry | undefined {
  const ofLogin = login === undefined ? entries : entries.filter((e) => e.login === login);
  return ofLogin.find((e) => e.machine?.toLowerCase() === host.toLowerCase()) ?? ofLogin.find((e) => !e.machine);
}

/**
 * The file's entries. A file that cannot be read is curl's 26 (curl 8.12.1 and later: --netrc
 * without a ~/.netrc included), unless `optional` (--netrc-optional) and it is not there.
 */
function readNetrc(path: string, flag: string, optional: boolean): NetrcEntry[] | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    const fix = flag === '--netrc-file' ? '' : ' (--netrc-optional goes on without it)';
    throw new UsageError(`${flag} ${path}: ${unreadable(err)}${fix}`, EXIT.read);
  }
  return parseNetrc(text);
}

async function readStdinLine(stdin: NodeJS.ReadStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) {
    chunks.push(chunk as Buffer);
    if (Buffer.concat(chunks).includes(10)) break;
  }
  const line = Buffer.concat(chunks).toString('utf8').split(/\r?\n/, 1)[0] ?? '';
  // Nothing piped in is a mistake (an empty variable, a missing file), not an empty password.
  if (line === '') throw new ConfigError('--password-stdin: stdin has no password (its first line is empty)');
  return line;
}

/**
 * Asks on the terminal without echoing (curl's wording). A signal meanwhile, or Ctrl-C typed (in raw
 * mode a key, not a signal), gives the terminal back as it was before the command dies by it, as
 * curl does: echo on, lines edited.
 */
async function prompt(question: string, stdin: NodeJS.ReadStream, stderr: NodeJS.WriteStream): Promise<string> {
  // Loaded only to prompt (most runs pass the password). The interface first: it puts the terminal
  // in raw mode, so nothing typed after the question echoes.
  const { createInterface } = await import('node:readline');
  const muted = new Writable({ write: (_c, _e, cb) => cb() });
  const rl = createInterface({ input: stdin, output: muted, terminal: true });
  const giveBack = () => {
    if (stdin.isTTY) stdin.setRawMode(false);
    stderr.write('\n');
  };
  const forget = undoOnSignal(giveBack);
  stderr.write(question);
  try {
    return await new Promise<string>((resolve, reject) => {
      rl.once('line', resolve);
      rl.once('close', () => reject(new ConfigError('no password entered')));
      // Ctrl-C: the command ends as by SIGINT (its handler releases the locks). The prompt is left
      // unanswered, not closed: "no password entered" would race the signal to the exit.
      rl.once('SIGINT', () => {
        forget();
        giveBack();
        process.kill(process.pid, 'SIGINT');
      });
    });
  } finally {
    forget();
    stderr.write('\n');
    rl.close();
  }
}

/**
 * The netrc file's entries and its entry for `host` (of `netrc.login` when the URL names one);
 * undefined for --netrc-optional without a home directory to look in.
 */
function netrcEntry(
  netrc: NonNullable<CredentialSources['netrc']>,
  host: string,
  env: NodeJS.ProcessEnv,
): { file: string; entries: NetrcEntry[]; entry: NetrcEntry | undefined } | undefined {
  const { file, optional, login } = netrc;
  const flag = file !== undefined ? '--netrc-file' : optional ? '--netrc-optional' : '--netrc';
  // ~/.netrc: never a relative .netrc (HOME=""), nor a crash where there is no home (a container's UID).
  const inHome = file === undefined && !env.NETRC;
  const home = inHome ? homeDir(env) : undefined;
  if (inHome && home === undefined) {
    if (optional) return undefined;
    throw new UsageError(
      `${flag}: no home directory to find .netrc in (HOME unset or not absolute, and no passwd entry): set HOME or NETRC, or pass --netrc-file FILE`,
      EXIT.read,
    );
  }
  const path = file ?? (env.NETRC || join(home!, '.netrc'));
  const entries = readNetrc(path, flag, optional) ?? [];
  return { file: path, entries, entry: entryFor(entries, host, login) };
}

/** The credentials for the agent, or undefined (Kerberos ticket only, or no authentication). */
export async function resolveCredentials(s: CredentialSources): Promise<Credentials | undefined> {
  let user = s.user;
  /** Where a user name without a password came from, for the message that asks for one. */
  let netrcFile: string | undefined;
  if (s.netrc !== undefined && (!user || s.netrc.login !== undefined)) {
    const found = netrcEntry(s.netrc, s.host, s.env);
    const entry = found?.entry;
    if (found && entry?.login) {
      user = { username: entry.login, password: entry.password };
      netrcFile = found.file;
      // Another entry is another host's unless it writes the same login and password: a password
      // typed at the prompt for this entry's login answers no other entry.
      const same = (other: NetrcEntry) =>
        other === entry ||
        (other.password !== undefined && other.login === entry.login && other.password === entry.password);
      s.fromNetrc?.({
        file: found.file,
        namesOther: (host) => {
          const other = entryFor(found.entries, host);
          return other !== undefined && !same(other);
        },
      });
    } else if (s.netrc.login === undefined) return undefined;
    // No entry for the URL's login: its password comes as -u's would (MULTILEG_PASSWORD, a prompt…).
  }
  if (!user) return undefined;
  // curl's `-u :` (with --negotiate): no user name, the ticket authenticates.
  if (user.username === '' && (user.password === undefined || user.password === '')) return undefined;
  if (user.password !== undefined) return { username: user.username, password: user.password };
  if (s.passwordStdin) return { username: user.username, password: await readStdinLine(s.stdin) };
  if (s.env.MULTILEG_PASSWORD !== undefined) return { username: user.username, password: s.env.MULTILEG_PASSWORD };
  if (s.stdin.isTTY && s.stderr.isTTY) {
    const password = await prompt(`Enter host password for user '${user.username}':`, s.stdin, s.stderr);
    return { username: user.username, password };
  }
  throw new ConfigError(
    netrcFile !== undefined
      ? `no password for ${user.username}: ${netrcFile}'s entry for ${s.host} has a login and no password; add 'password …' to it, pipe it with --password-stdin, or set MULTILEG_PASSWORD`
      : `no password for ${user.username}: write -u user:password, pipe it with --password-stdin, put it in a -K file (user = "user:password") or a --netrc-file, or set MULTILEG_PASSWORD${
          // curl --negotiate -u alice asks, then uses the ticket whatever is typed: here -u : says that.
          s.negotiateOnly ? '; or, for the Kerberos ticket alone, -u : (no user, no password)' : ''
        }`,
  );
}

/**
 * The credentials a parsed command line asks for, from this process's environment and terminal;
 * `fromNetrc` is told what the netrc file says of other hosts when they come from one.
 */
export function credentialsFor(
  req: CliRequest,
  fromNetrc?: (found: NetrcFound) => void,
): Promise<Credentials | undefined> {
  return resolveCredentials({
    fromNetrc,
    user: req.user,
    passwordStdin: req.passwordStdin,
    negotiateOnly: req.agent.schemes?.length === 1 && req.agent.schemes[0] === 'Negotiate',
    netrc: req.netrc,
    host: req.url.hostname,
    env: process.env,
    // Opened only if read: process.stdin's getter makes a stream on fd 0 (~0.5 ms, and a pipe
    // there is made non-blocking for every process that shares it), which -u user:password never needs.
    get stdin() {
      return process.stdin;
    },
    stderr: process.stderr,
  });
}

/**
 * The agent's options with the proxy's password of `-U user` (none given): asked for on the
 * terminal as curl does; without one, bad usage naming the fix. Unchanged when nothing is to ask.
 */
export async function withProxyPassword(
  req: CliRequest,
  io: { readonly stdin: NodeJS.ReadStream; readonly stderr: NodeJS.WriteStream } = process,
): Promise<CliRequest['agent']> {
  const username = req.proxyUserToAsk;
  const proxy = req.agent.proxy;
  if (username === undefined || typeof proxy !== 'object') return req.agent;
  if (!(io.stdin.isTTY && io.stderr.isTTY))
    throw new ConfigError(`no proxy password for ${username}: write -U user:password (there is no terminal to ask on)`);
  const password = await prompt(`Enter proxy password for user '${username}':`, io.stdin, io.stderr);
  return { ...req.agent, proxy: { ...proxy, credentials: { username, password } } };
}
