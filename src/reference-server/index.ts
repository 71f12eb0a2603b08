/**
 * The reference server: the server half of "Multilegged Authentication for HTTP Multiplexing"
 * (Auth-ID, Persistent-Auth, context limits, IIS/legacy behaviours, fault switches), recording
 * every exchange. A test peer, not a production server.
 */

export {
  type ProxyExchange,
  ReferenceProxy,
  type ReferenceProxyOptions,
  startReferenceProxy,
} from './proxy.ts';
export {
  DEFAULT_USERS,
  ReferenceServer,
  type ReferenceServerEvents,
  serverEndPointHash,
  startReferenceServer,
} from './server.ts';
export { CA_CERT, CLIENT_CERT, CLIENT_KEY } from './test-pki.ts';
export type {
  AcceptorFactoryInfo,
  AcceptorLike,
  AcceptorStep,
  Exchange,
  ExchangeOutcome,
  IncomingRequestInfo,
  ReferenceResponseBody,
  ReferenceServerFaults,
  ReferenceServerMode,
  ReferenceServerOptions,
  ReferenceServerStats,
  ResolvedReferenceServerOptions,
  SessionInfo,
} from './types.ts';
