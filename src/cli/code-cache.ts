/**
 * Runs the installed command's one script (scripts/bundle-cli.ts) with a V8 code cache made after a
 * run. Node's module compile cache is made right after a module compiles, before any of its
 * functions runs, so it holds top-level code only and every function a request calls was compiled
 * again at each start (~15% of a request's instructions). A cache V8 makes once the command has run
 * holds those functions too (docs/PERFORMANCE.md "CLI start").
 *
 * The cache is `<cacheDir>/code-cache/<script>-<node>-<arch>[-<options>].v8`: the script's name
 * carries a hash of its content (V8 checks only the source's length), the rest what V8 checks anyway
 * (a tag of Node's options: see flagsTag). It is made by a run that ends with exit 0 where there is
 * none or V8 rejected it, and made again by one that exercised something the runs that made it did not
 * (see {@link CachedScript.save}): V8 accepts a cache that holds none of a later run's functions,
 * so the first run alone (an unauthenticated request) left an NTLM run compiling its own at every
 * start. It is read only from a directory and a file of this user's that others cannot write:
 * cached code runs as this user.
 */
import {
  chmodSync,
  closeSync,
  fstatSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  type Stats,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { Script } from 'node:vm';
import { cacheDir, ownDir } from './dirs.ts';

/** The script run, and {@link save} once its run is over. */
export interface CachedScript<T> {
  readonly exports: T;
  /**
   * Writes the code cache if this run read none, V8 rejected it, or `exercised` names what the
   * runs that made it did not. Never throws.
   *
   * `exercised`: what the run did, as short names (the command's options, the schemes and
   * protocols of its legs: main.ts `exercised`), each a stand-in for code it ran. The file keeps
   * the union of its makers' names: a cache made after a run that read one holds the functions
   * that came from it too (V8 deserialises them all), so the cache grows towards what the
   * user's runs use, is written once per name new to it, and runs that alternate do not rewrite it.
   */
  save(exercised: readonly string[]): void;
}

/**
 * Runs `file`, a CommonJS script (ASCII: read as Latin-1 without decoding), as Node runs a module
 * (`require`, `module`, `__filename` of its own), with the code cache of an earlier run when there
 * is one, and returns its exports.
 */
export function runCached<T>(file: string, env: NodeJS.ProcessEnv = process.env): CachedScript<T> {
  // Only Node's loader reads a script's source map, not vm.Script: with --enable-source-maps the
  // stack traces lead back to src/, at the cost of the cache.
  if (process.sourceMapsEnabled) return { exports: createRequire(file)(file) as T, save() {} };
  const cache = env.NODE_DISABLE_COMPILE_CACHE ? undefined : cachePath(file, env);
  const read = cache === undefined ? undefined : parse(readOwn(cache));
  const cachedData = read?.data;
  // The wrapper's line comes before the script's first: lineOffset keeps stack traces' lines.
  const script = new Script(
    `(function (exports, require, module, __filename, __dirname) {'use strict';\n${readFileSync(file, 'latin1')}\n})`,
    { filename: file, lineOffset: -1, ...(cachedData ? { cachedData } : {}) },
  );
  const module = { exports: {} as T };
  script.runInThisContext()(module.exports, createRequire(file), module, file, dirname(file));
  return {
    exports: module.exports,
    save(exercised) {
      if (cache === undefined) return;
      // Only V8's acceptance says the file's code is in this process, to be written again with it.
      const had = read && !script.cachedDataRejected ? read.exercised : undefined;
      // A name the header could not keep would make the file again at every run.
      const names = exercised.filter((name) => NAME.test(name));
      if (had && names.every((name) => had.has(name))) return;
      try {
        write(cache, [header(new Set([...(had ?? []), ...names])), script.createCachedData()]);
      } catch {
        // A cache that cannot be written costs the next run its compile time, nothing else.
      }
    },
  };
}

/** This user's id; undefined where there are none (Windows: the profile's folders are the user's). */
const uid = process.getuid?.();

/** Whether this user owns `st` and no one else may write it (always, where there are no user ids). */
const ownedAlone = (st: Stats): boolean => uid === undefined || (st.uid === uid && (st.mode & 0o022) === 0);

/** The cache file for `file`, in a directory of this user's only (made so); undefined when there is none. */
function cachePath(file: string, env: NodeJS.ProcessEnv): string | undefined {
  const home = cacheDir(env);
  if (home === undefined) return undefined;
  const dir = join(home, 'code-cache');
  try {
    // Others' write taken away, whoever made it (ownDir: this user's, else none).
    const st = ownDir(dir);
    if (!ownedAlone(st)) chmodSync(dir, st.mode & ~0o022);
  } catch {
    return undefined;
  }
  return join(dir, `${basename(file, '.cjs')}-${process.version}-${process.arch}${flagsTag(env)}.v8`);
}

/**
 * The options Node was started with, as a short tag (none without): V8 rejects a cache made under
 * other flags (`NODE_OPTIONS=--max-old-space-size=…` in a cron job, none in a shell), so each set
 * keeps a file of its own rather than both rewriting one at every switch.
 */
function flagsTag(env: NodeJS.ProcessEnv): string {
  const options = [env.NODE_OPTIONS ?? '', ...process.execArgv].join(' ').trim();
  if (options === '') return '';
  let hash = 0x811c9dc5; // FNV-1a: a name, not a secret
  for (let i = 0; i < options.length; i++) hash = Math.imul(hash ^ options.charCodeAt(i), 0x01000193) >>> 0;
  return `-${hash.toString(16)}`;
}

/** The file's bytes if this user owns it and others cannot write it; else undefined. */
function readOwn(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!ownedAlone(st)) return undefined;
    return readFileSync(fd);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** Caches not written for this long are removed when another is written: earlier installs' and Nodes'. */
const STALE_MS = 30 * 24 * 3600 * 1000;
/** A temporary file this old is a killed run's (a write takes milliseconds). */
const TEMP_STALE_MS = 3600 * 1000;

/**
 * The file's first line: this tag, then the names its makers' runs exercised, space-separated. It
 * holds names of options and schemes, never their values.
 */
const MAGIC = 'multileg-code-cache/1';
/** A name as a header keeps it (main.ts makes them so): no space or line end. */
const NAME = /^[\w.:@+/-]{1,64}$/;

/** The header that {@link parse} reads back. */
function header(exercised: ReadonlySet<string>): Buffer {
  return Buffer.from(`${[MAGIC, ...[...exercised].sort()].join(' ')}\n`, 'latin1');
}

/** A cache file's V8 data and the names of its header; undefined for none, or one not in this format. */
function parse(bytes: Buffer | undefined): { data: Buffer; exercised: ReadonlySet<string> } | undefined {
  if (bytes === undefined || !bytes.subarray(0, MAGIC.length).equals(Buffer.from(MAGIC, 'latin1'))) return undefined;
  // The first line end is the header's: no name holds one (V8's data after it may).
  const end = bytes.indexOf(0x0a);
  if (end < 0) return undefined;
  const [magic, ...names] = bytes.toString('latin1', 0, end).split(' ');
  if (magic !== MAGIC || !names.every((name) => NAME.test(name))) return undefined;
  return { data: bytes.subarray(end + 1), exercised: new Set(names) };
}

/** Writes the cache aside and renames it in (of two runs at once, either's whole file); removes stale ones. */
function write(path: string, parts: readonly Buffer[]): void {
  const temp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(temp, Buffer.concat(parts), { mode: 0o600 });
    renameSync(temp, path);
  } catch (err) {
    // A full disk or a quota: what was written would stay, one more file at each run.
    rmSync(temp, { force: true });
    throw err;
  }
  const dir = dirname(path);
  for (const name of readdirSync(dir)) {
    const other = join(dir, name);
    const stale = name.endsWith('.v8') ? STALE_MS : name.endsWith('.tmp') ? TEMP_STALE_MS : undefined;
    if (other !== path && stale !== undefined && Date.now() - statSync(other).mtimeMs > stale)
      rmSync(other, { force: true });
  }
}
