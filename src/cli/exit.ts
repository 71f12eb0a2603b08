/**
 * Ending the command's process while a GSS-API call still holds it. A call that may wait on a KDC
 * runs on a libuv worker thread (koffi's `.async`), and MIT gives up on a KDC that never answers
 * only after its own timeouts (27 s measured, review r43). Node's exit, `process.exit()` too, joins
 * its worker threads first, so a command whose work is done would wait that long to end. libc's
 * `_exit` does not.
 */

/** The C library `_exit` lives in, by platform (the GSS-API binding serves Linux and the BSDs; the addon macOS). */
const LIBC: Readonly<Partial<Record<NodeJS.Platform, readonly string[]>>> = {
  linux: ['libc.so.6', 'libc.so'],
  freebsd: ['libc.so.7'],
  openbsd: ['libc.so'],
  darwin: ['libSystem.B.dylib'],
};

/**
 * Ends the process now with `code` through libc's `_exit`: no exit handlers, no thread joins. For a
 * caller that has flushed its output and closed its files. Resolves false where it cannot (no
 * koffi, no libc found): the caller then exits as Node does.
 */
export async function exitNow(code: number): Promise<boolean> {
  try {
    const mod = (await import('koffi')) as unknown as KoffiExit & { default?: KoffiExit };
    const koffi = typeof mod.load === 'function' ? mod : mod.default;
    for (const name of LIBC[process.platform] ?? []) {
      let exit: ((code: number) => void) | undefined;
      try {
        exit = koffi?.load(name).func('void _exit(int)');
      } catch {
        continue;
      }
      exit?.(code);
    }
  } catch {
    // koffi is optional: not installed here.
  }
  return false;
}

/** The slice of koffi used here (typed locally: koffi is optional). */
interface KoffiExit {
  load(name: string): { func(declaration: string): (code: number) => void };
}
