/**
 * Where the command finds the user's files: the home directory (`~/.netrc`), the state directory
 * (the refusal file, refusals.ts) and the cache directory (V8's code cache, code-cache.ts). They are
 * looked up when a run needs them, never at start: a container's arbitrary UID has none, and only
 * the runs that need one may fail for it (the cache is only skipped).
 */
import { mkdirSync, type Stats, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';

/**
 * The command's state directory: `$XDG_STATE_HOME/multileg`, else `~/.local/state/multileg` (XDG: a
 * relative value is ignored). Throws when there is neither (HOME unset or relative and no passwd
 * entry: an arbitrary UID in a container); the caller goes on without the file.
 */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, 'multileg');
  const home = homeDir(env);
  if (home === undefined)
    throw new Error('XDG_STATE_HOME is not set and there is no home directory (HOME unset, no passwd entry)');
  return join(home, '.local', 'state', 'multileg');
}

/**
 * The command's cache directory: `$XDG_CACHE_HOME/multileg`, else `~/.cache/multileg` (XDG: a
 * relative value is ignored); undefined when there is neither.
 */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const xdg = env.XDG_CACHE_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, 'multileg');
  const home = homeDir(env);
  return home === undefined ? undefined : join(home, '.cache', 'multileg');
}

/**
 * The home directory: `$HOME` when absolute, else the passwd entry's; undefined when there is none
 * (a container's arbitrary UID). Never throws (Node's `homedir()` does there), and never a relative
 * path (`HOME=""` would make one of the current directory).
 */
export function homeDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.HOME && isAbsolute(env.HOME)) return env.HOME;
  try {
    // Without HOME (env -i), libuv asks the passwd entry: ENOENT for a UID that has none.
    const home = userInfo().homedir;
    return home && isAbsolute(home) ? home : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether this user may make what is missing of `dir` (mkdir -p): the nearest part there is is this
 * user's or everyone's (/tmp). Root may write anywhere, and `sudo -E` or `su` keep the user's HOME: a
 * ~/.cache made root's (0700) would be the user's no more, for any program of theirs.
 */
function mayMakeDir(dir: string): boolean {
  const uid = process.getuid?.();
  for (let path = dir; ; path = dirname(path)) {
    try {
      const st = statSync(path);
      return uid === undefined || st.uid === uid || (st.mode & 0o002) !== 0;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(path) === path) return false;
    }
  }
}

/**
 * `dir`, made (0700, with what is missing above it) unless that would be in another user's tree
 * ({@link mayMakeDir}), and checked to be this user's; its stat, for the caller's rule on its mode.
 * @throws {Error} saying why it cannot be this user's directory.
 */
export function ownDir(dir: string): Stats {
  if (!mayMakeDir(dir)) throw new Error(`${dir} is in another user's tree`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if (process.getuid && st.uid !== process.getuid()) throw new Error(`${dir} belongs to another user`);
  return st;
}
