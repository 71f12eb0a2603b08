/**
 * Ending the command's process while a GSS-API call still holds it. A call that may wait on a KDC
 * runs on a libuv worker thread (koffi's `.async`), and MIT gives up on a KDC that never answers
 * only after its own timeouts (27 s measured, review r43). Node's exit, `process.exit()` too, joins
 * its worker threads first, so a command whose work is done would wait that long to end. libc's
 * `_exit` does not.
 */
import { constants } from 'node:os';

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

/** The signals that end the command (curl dies by them; a container's stop is SIGTERM). */
const ENDING: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

/** What must be undone before a signal ends the command (see {@link undoOnSignal}). */
const undos = new Set<() => void>();

/**
 * Registers `undo`, run before a signal ends the command: a terminal a prompt put in raw mode,
 * which Node restores on a signal only while no listener of its own replaces its handler. Returns
 * its removal (the prompt ended).
 */
export function undoOnSignal(undo: () => void): () => void {
  undos.add(undo);
  return () => undos.delete(undo);
}

/**
 * Ends the command on SIGTERM, SIGINT or SIGHUP as curl ends: what {@link undoOnSignal} registered
 * (a terminal in raw mode) and `cleanup` first (the locks of the state file: Node runs no `exit`
 * listener when a signal kills it), then the signal again with
 * Node's handler gone, so that the process dies by it. Where that does nothing — PID 1 of a PID
 * namespace (a container's `command:`), for which the kernel drops a signal it has no handler for
 * — it exits 128 + the signal's number, through `_exit` (a GSS-API call may hold a worker thread).
 * What was written stays as it is (a partial -o file, as curl leaves it). For the command only: a
 * library leaves its process's signals to the application.
 */
export function endOnSignals(cleanup: () => void): void {
  const end = (signal: NodeJS.Signals) => {
    for (const s of ENDING) process.removeListener(s, end);
    for (const undo of [...undos, cleanup]) {
      try {
        undo();
      } catch {
        // Ending anyway: a lock left is broken by the next run (its pid is gone).
      }
    }
    process.kill(process.pid, signal);
    // Still running: the signal was dropped (PID 1).
    const code = 128 + (constants.signals[signal as keyof typeof constants.signals] ?? 15);
    process.exitCode = code;
    void exitNow(code).then((ended) => {
      if (!ended) process.exit(code);
    });
  };
  for (const s of ENDING) process.on(s, end);
}
