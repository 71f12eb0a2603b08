/**
 * Authentication challenges (T1, T2) and the multilegged-auth response headers (C3, C4, H3, H4).
 */
export { chooseChallenge, DEFAULT_SCHEME_ORDER, digestAlgorithmStrength } from './choose.ts';
export {
  type AuthIdReading,
  DEFAULT_MAX_AUTH_ID_LENGTH,
  formatChallenge,
  getHeader,
  hasPersistentAuth,
  MAX_REMOTE_HTTP_VERSION_LENGTH,
  type ResponseHeaders,
  readAuthenticationInfo,
  readAuthId,
  readChallenges,
  readPersistentAuth,
  readProxySupport,
  readRemoteHttpVersion,
} from './headers.ts';
export {
  DEFAULT_MAX_CHALLENGE_BYTES,
  DEFAULT_MAX_CHALLENGES,
  type ParseChallengesOptions,
  parseAuthParams,
  parseChallenges,
} from './parse.ts';
export type { Challenge } from './types.ts';
