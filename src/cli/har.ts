/**
 * `--har FILE`: every leg as a HAR 1.2 entry (http://www.softwareishard.com/blog/har-12-spec/), so a
 * browser's developer tools show the whole handshake. Header values arrive redacted (S2).
 */
import type { LegRecord } from './trace.ts';
import { MULTILEG_VERSION } from './version.ts';

interface HarHeader {
  name: string;
  value: string;
}

const httpVersion = (p: string | undefined) => (p === 'h2' ? 'HTTP/2' : 'HTTP/1.1');
const harHeaders = (h: readonly (readonly [string, string])[]): HarHeader[] =>
  h.map(([name, value]) => ({ name, value }));

/** The HAR document of `legs`. A leg that failed on the wire has status 0 and its error in `_error`. */
export function toHar(legs: readonly LegRecord[]): object {
  return {
    log: {
      version: '1.2',
      creator: { name: 'multileg', version: MULTILEG_VERSION },
      entries: legs.map((leg) => {
        const { request, response, error } = leg;
        // A CONNECT names host:port, not a path: show it as the proxy's URL with the target.
        const url =
          request.method === 'CONNECT'
            ? `${request.origin}/?connect=${encodeURIComponent(request.path)}`
            : new URL(request.path, request.origin).href;
        const end = response?.time ?? error?.time ?? request.time;
        const wait = Math.max(0, end - request.time);
        const protocol = response?.protocol ?? request.protocol;
        const contentType = response?.headers.find(([n]) => n === 'content-type')?.[1] ?? '';
        const location = response?.headers.find(([n]) => n === 'location')?.[1] ?? '';
        const query = new URL(url).searchParams;
        return {
          startedDateTime: new Date(request.time).toISOString(),
          time: wait,
          request: {
            method: request.method,
            url,
            httpVersion: httpVersion(protocol),
            cookies: [],
            headers: harHeaders(request.headers),
            queryString: [...query].map(([name, value]) => ({ name, value })),
            headersSize: -1,
            bodySize: -1,
          },
          response: {
            status: response?.status ?? 0,
            statusText: '',
            httpVersion: httpVersion(protocol),
            cookies: [],
            headers: harHeaders(response?.headers ?? []),
            // bodySize is the bytes received; content.size the body's own, decoded with --compressed
            // (HAR's `compression`: the bytes the coding saved).
            content: {
              size: leg.contentSize ?? leg.bodySize ?? 0,
              ...(leg.contentSize !== undefined && leg.bodySize !== undefined
                ? { compression: leg.contentSize - leg.bodySize }
                : {}),
              mimeType: contentType,
            },
            redirectURL: location,
            headersSize: -1,
            bodySize: leg.bodySize ?? (response?.delivered ? -1 : 0),
          },
          cache: {},
          timings: { send: 0, wait, receive: 0 },
          connection: request.sessionId,
          comment: response
            ? response.delivered
              ? 'delivered to the caller'
              : 'intermediate leg: not passed to the caller'
            : 'failed on the wire',
          ...(request.scheme ? { _authScheme: request.scheme, _authId: request.authId } : {}),
          ...(error ? { _error: `${error.error.code ?? error.error.name}: ${error.error.message}` } : {}),
        };
      }),
    },
  };
}
