import { createRequire } from 'node:module';
import type createDebugType from 'debug';

type Logger = (formatter: string, ...args: unknown[]) => void;

/**
 * `debug` costs ~15 ms to load and most runs log nothing (the CLI's start counts, issue 10): it is
 * loaded only when `DEBUG` is set as the process starts.
 */
const createDebug: typeof createDebugType | undefined = process.env.DEBUG
  ? (createRequire(import.meta.url)('debug') as typeof createDebugType)
  : undefined;
const off: Logger = () => {};
/** Whether any debug output can be on: a hot path skips building a line's arguments when not. */
export const logging = createDebug !== undefined;
const logger = (namespace: string): Logger => (createDebug ? createDebug(namespace) : off);

/**
 * Debug namespaces (`DEBUG=multileg:*`). Call sites pass facts only — ids, schemes, status codes,
 * whether an Auth-ID was present — never header values, tokens or passwords (S2). There is no
 * helper that accepts a header value, so a secret cannot reach a log line by accident.
 */
export const log = {
  agent: logger('multileg:agent'),
  pool: logger('multileg:pool'),
  session: logger('multileg:session'),
  leg: logger('multileg:leg'),
  handshake: logger('multileg:handshake'),
  proxy: logger('multileg:proxy'),
};
