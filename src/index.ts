export { MultilegAgent, type MultilegStats } from './agent.ts';
export { chooseChallenge, DEFAULT_SCHEME_ORDER, parseChallenges } from './challenge/index.ts';
export type { Challenge } from './challenge/types.ts';
export * from './errors.ts';
export { ntlmMechanism, ntlmMechanismWithScheme } from './mechanisms/ntlm/index.ts';
export type { AuthLevel, Credentials, LegInfo, Mechanism, MechanismContext } from './mechanisms/types.ts';
export type { Limits, MultilegAgentOptions } from './options.ts';
export type { HandshakeReport } from './session/exchange.ts';
export type { SessionEvent, SessionState } from './session/state.ts';
