/**
 * `--har FILE`: every leg as a HAR 1.2 entry (http://www.softwareishard.com/blog/har-12-spec/), so a
 * browser's developer tools show the whole handshake. Header values arrive redacted (S2); a request
 * body is shown as HAR's postData where it is text, its credential-like fields redacted (S2).
 */
import type { LegRecord } from './trace.ts';
import { MULTILEG_VERSION } from './version.ts';

interface HarHeader {
  name: string;
  value: string;
}

interface HarParam {
  name: string;
  value?: string;
  fileName?: string;
  contentType?: string;
}

interface HarPostData {
  mimeType: string;
  params?: HarParam[];
  text?: string;
  comment?: string;
}

const httpVersion = (p: string | undefined) => (p === 'h2' ? 'HTTP/2' : 'HTTP/1.1');

/**
 * A form field or JSON key whose value is a credential (a login form's password, a token, a key):
 * never written into the file (S2: a HAR file is attached to tickets). On the safe side: `author`
 * and `passport` are hidden too.
 */
const SECRET_FIELD = /pass|pwd|secret|token|auth|credential|session|cookie|api[-_]?key|private[-_]?key|otp|signature/i;
const REDACTED = '[redacted]';
/** The largest request body shown as postData (bytes). */
const MAX_SHOWN_BODY = 64 * 1024;

/** The media type of a Content-Type, in lower case, and its parameters. */
function mediaType(contentType: string): { type: string; params: Map<string, string> } {
  const [type = '', ...rest] = contentType.split(';');
  const params = new Map<string, string>();
  for (const p of rest) {
    const eq = p.indexOf('=');
    if (eq > 0)
      params.set(
        p.slice(0, eq).trim().toLowerCase(),
        p
          .slice(eq + 1)
          .trim()
          .replace(/^"(.*)"$/, '$1'),
      );
  }
  return { type: type.trim().toLowerCase(), params };
}

/** A media type whose body is text a developer tool can show. */
const isText = (type: string) =>
  type.startsWith('text/') ||
  /^application\/(json|xml|javascript|ecmascript|graphql|x-www-form-urlencoded)$/.test(type) ||
  /\+(json|xml)$/.test(type);

/** A form-urlencoded piece's name or value, decoded as a server reads it (a `+` is a space). */
const formDecode = (text: string) => {
  try {
    return decodeURIComponent(text.replaceAll('+', ' '));
  } catch {
    return text;
  }
};

/** A JSON value with the values of credential-like keys redacted, at any depth. */
function redactJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactJson);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value).map(([k, v]) => [k, SECRET_FIELD.test(k) ? REDACTED : redactJson(v)]),
  );
}

/** A multipart/form-data body's fields as HAR params: a file part by its name and type, no content. */
function multipartParams(body: Buffer, boundary: string): HarParam[] {
  const params: HarParam[] = [];
  for (const part of body.toString('latin1').split(`--${boundary}`).slice(1)) {
    if (part.startsWith('--')) break;
    const split = part.indexOf('\r\n\r\n');
    if (split < 0) continue;
    const head = part.slice(0, split);
    const disposition = /^content-disposition:(.*)$/im.exec(head)?.[1] ?? '';
    // One quoted name, as -F writes it; another form (a token, `name*=`, two names) is not read:
    // its value is then not shown (S2: it may be the password).
    const names = [...disposition.matchAll(/(?:^|;)\s*name\s*=\s*"([^"]*)"/gi)].map((m) => m[1]!);
    const readable = names.length === 1 && !/\bname\*?\s*=\s*[^"\s]/i.test(disposition.replace(/"[^"]*"/g, '""'));
    const name = readable ? names[0]! : (names[0] ?? '');
    const fileName = /\bfilename="([^"]*)"/i.exec(disposition)?.[1];
    const contentType = /^content-type:\s*(.*)$/im.exec(head)?.[1]?.trim();
    if (fileName !== undefined) params.push({ name, fileName, ...(contentType ? { contentType } : {}) });
    else {
      const value = Buffer.from(part.slice(split + 4).replace(/\r\n$/, ''), 'latin1').toString('utf8');
      params.push({ name, value: !readable || SECRET_FIELD.test(name) ? REDACTED : value });
    }
  }
  return params;
}

/**
 * HAR's postData for a request body sent with `contentType`: a form's fields and text and a JSON
 * body's text, their credential-like fields redacted; a multipart form's fields (files by name);
 * another body, text or not, by its type and size alone.
 */
function postData(body: Buffer, contentType: string): HarPostData {
  const { type, params } = mediaType(contentType);
  // Not parsed past this size (a HAR is for reading; a 73 MB body took 1.1 GB to show).
  if (body.length > MAX_SHOWN_BODY)
    return { mimeType: contentType, comment: `${body.length} bytes: not shown (over ${MAX_SHOWN_BODY})` };
  if (type === 'multipart/form-data' && params.has('boundary'))
    return { mimeType: contentType, params: multipartParams(body, params.get('boundary')!) };
  if (!isText(type)) return { mimeType: contentType, comment: `${body.length} bytes, not text: not shown` };
  const text = body.toString('utf8');
  // A form whose every piece is name=value (curl's -d labels any body a form: a JSON or XML body, a
  // bare token sent so is not one, and is not shown, as other text).
  if (type === 'application/x-www-form-urlencoded' && text.split('&').every((piece) => /^[^=]+=/.test(piece))) {
    const pieces = text.split('&').map((piece) => {
      const eq = piece.indexOf('=');
      const rawName = eq < 0 ? piece : piece.slice(0, eq);
      const name = formDecode(rawName);
      const secret = SECRET_FIELD.test(name);
      return {
        text: secret && eq >= 0 ? `${rawName}=${REDACTED}` : piece,
        param: { name, value: secret ? REDACTED : eq < 0 ? '' : formDecode(piece.slice(eq + 1)) },
      };
    });
    return { mimeType: contentType, params: pieces.map((p) => p.param), text: pieces.map((p) => p.text).join('&') };
  }
  if (type === 'application/json' || type.endsWith('+json')) {
    try {
      const parsed: unknown = JSON.parse(text);
      const redacted = redactJson(parsed);
      return {
        mimeType: contentType,
        text: JSON.stringify(redacted) === JSON.stringify(parsed) ? text : JSON.stringify(redacted),
      };
    } catch {}
  }
  // Other text (XML, plain, JSON that does not parse) is not shown: nothing to find a credential in
  // by its name (a SOAP request's WS-Security password, say), and a HAR file goes into tickets (S2).
  return {
    mimeType: contentType,
    comment: `${body.length} bytes of ${type || 'text'}: not shown (it may hold credentials)`,
  };
}
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
            // The bytes its body sent (a CONNECT sends none); -1 for a leg the command did not tell.
            bodySize: leg.requestBody?.bytes.length ?? (request.method === 'CONNECT' ? 0 : -1),
            ...(leg.requestBody && leg.requestBody.bytes.length > 0
              ? { postData: postData(leg.requestBody.bytes, leg.requestBody.mimeType) }
              : {}),
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
          // Whose leg (a CONNECT's is the proxy's), and each header's scheme apart (origin, proxy).
          _target: request.target,
          ...(request.scheme ? { _authScheme: request.scheme, _authId: request.authId } : {}),
          ...(request.proxyScheme ? { _proxyAuthScheme: request.proxyScheme } : {}),
          ...(error ? { _error: `${error.error.code ?? error.error.name}: ${error.error.message}` } : {}),
        };
      }),
    },
  };
}
