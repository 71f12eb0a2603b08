import createDebug from 'debug';

/**
 * Debug namespaces (`DEBUG=multileg:*`). Call sites pass facts only — ids, schemes, status codes,
 * whether an Auth-ID was present — never header values, tokens or passwords (S2). There is no
 * helper that accepts a header value, so a secret cannot reach a log line by accident.
 */
export const log = {
  agent: createDebug('multileg:agent'),
  pool: createDebug('multileg:pool'),
  session: createDebug('multileg:session'),
  leg: createDebug('multileg:leg'),
  handshake: createDebug('multileg:handshake'),
  proxy: createDebug('multileg:proxy'),
};
