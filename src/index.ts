export { MultilegAgent, type MultilegStats } from './agent.ts';
export * from './errors.ts';
export type { Challenge } from './challenge/types.ts';
export { parseChallenges, chooseChallenge, DEFAULT_SCHEME_ORDER } from './challenge/index.ts';
export type { Credentials, Mechanism, MechanismContext, LegInfo, AuthLevel } from './mechanisms/types.ts';
export { ntlmMechanism, ntlmMechanismWithScheme } from './mechanisms/ntlm/index.ts';
export type { MultilegAgentOptions, Limits } from './options.ts';
export type { HandshakeReport } from './session/exchange.ts';
export type { SessionState, SessionEvent } from './session/state.ts';
