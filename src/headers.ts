/** Request headers normalised to lower-case names; repeated headers become arrays. */
export type HeaderMap = Record<string, string | string[]>;

/** Adds one header to `out` (a module function, not a closure per call; no array for a single value). */
function add(out: HeaderMap, k: unknown, v: unknown): void {
  if (v === undefined || v === null) return;
  const key = String(k).toLowerCase();
  const prev = out[key];
  if (!Array.isArray(v)) {
    const value = String(v);
    if (prev === undefined) out[key] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[key] = [prev, value];
    return;
  }
  const values = v.map(String);
  if (prev === undefined) out[key] = values.length === 1 ? values[0]! : values;
  else out[key] = [...(Array.isArray(prev) ? prev : [prev]), ...values];
}

/**
 * A request without headers (undici's `request()` without `headers`): one shared map, not an object
 * per request. Frozen: nothing writes a Job's headers (legs copy them), and a write would throw.
 */
const NO_HEADERS: HeaderMap = Object.freeze({});

/**
 * undici accepts request headers as an object, a flat `[k, v, k, v]` array, or an iterable of
 * pairs, depending on the caller (fetch passes an object, `request()` whatever it was given).
 */
export function normalizeRequestHeaders(headers: unknown): HeaderMap {
  if (headers == null) return NO_HEADERS;
  const out: HeaderMap = {};
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers as unknown[][]) add(out, pair[0], pair[1]);
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2) add(out, headers[i], headers[i + 1]);
    }
    return out;
  }
  if (
    typeof headers === 'object' &&
    Symbol.iterator in headers &&
    typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function'
  ) {
    for (const pair of headers as Iterable<[unknown, unknown]>) add(out, pair[0], pair[1]);
    return out;
  }
  // (for…in over own keys: no entries array per request, as Object.entries made.)
  const record = headers as Record<string, unknown>;
  for (const k in record) if (Object.hasOwn(record, k)) add(out, k, record[k]);
  return out;
}
