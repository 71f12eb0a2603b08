/**
 * WebAssembly stays on V8's baseline compiler (Liftoff) in the command's short-lived process:
 * after the few responses of one command, undici's HTTP/1.1 parser (WebAssembly) was being
 * recompiled with TurboFan on a background thread (33 ms) that the process then waited for before
 * it could exit. The library itself leaves V8 alone.
 */

/**
 * Turns WebAssembly tier-up off (`--no-wasm-tier-up --no-wasm-dynamic-tiering`: Node 24's V8 ignores
 * `--liftoff-only` set at run time, and without dynamic tiering V8 tiers everything up eagerly
 * unless tier-up is off too). Call it once every module the request needs is loaded, just before the
 * first request (undici compiles its parser on the first HTTP/1.1 connection), never earlier: a V8
 * flag set at run time changes V8's flag hash, and a code cache made under another hash is
 * rejected — Node's own, built in for http2, tls, stream and the rest, too. Set before those
 * loaded, it had them all compiled from source: ~10 ms of every command (docs/PERFORMANCE.md
 * "CLI start").
 */
export async function keepWasmOnBaseline(): Promise<void> {
  // The one module of Node's own a request loads once it runs (net, at its first host name
  // lookup): loaded first, it keeps its code cache too.
  await import('node:dns');
  changed = await import('node:v8');
  changed.setFlagsFromString('--no-wasm-tier-up --no-wasm-dynamic-tiering');
}

/** node:v8, once {@link keepWasmOnBaseline} has changed V8's flags. */
let changed: typeof import('node:v8') | undefined;

/**
 * Puts back the flags {@link keepWasmOnBaseline} changed (V8's defaults), once the requests are
 * done: a code cache made after the run (code-cache.ts) carries the hash of the flags then, and the
 * next run, which starts without them, would reject it.
 */
export function restoreWasmTiering(): void {
  changed?.setFlagsFromString('--wasm-tier-up --wasm-dynamic-tiering');
  changed = undefined;
}
