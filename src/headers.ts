/** Request headers normalised to lower-case names; repeated headers become arrays. */
export type HeaderMap = Record<string, string | string[]>;

/** Adds one header to `out` (a module function, not a closure per call; no array for a single value). */
function add(out: HeaderMap, k: unknown, v: unknown): void {
  if (v === undefined) return;
  const key = String(k).toLowerCase();
  const prev = out[key];
  if (!Array.isArray(v)) {
    // null is an empty value, as undici sends it (a `host: null` is an empty Host on HTTP/1.1).
    const value = v === null ? '' : String(v);
    if (prev === undefined) out[key] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else out[key] = [prev, value];
    return;
  }
  const values = v.map((x) => (x === null ? '' : String(x)));
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
    // Always flat, as undici reads an array (`[['host'], 'x']` is a Host to undici: review r42).
    for (let i = 0; i + 1 < headers.length; i += 2) add(out, headers[i], headers[i + 1]);
    return out;
  }
  if (iterableHeaders(headers)) {
    for (const pair of headers as Iterable<[unknown, unknown]>) add(out, pair[0], pair[1]);
    return out;
  }
  // (for…in over own keys: no entries array per request, as Object.entries made.)
  const record = headers as Record<string, unknown>;
  for (const k in record) if (Object.hasOwn(record, k)) add(out, k, record[k]);
  return out;
}

/**
 * Headers given as an iterable of pairs (a `Headers`, a `Map`, a generator): read once, by the
 * agent, which then sends what it read, so that what it decided on is what goes (a generator may
 * yield other pairs, or none, a second time).
 */
export function iterableHeaders(headers: unknown): headers is Iterable<[unknown, unknown]> {
  return (
    typeof headers === 'object' &&
    headers !== null &&
    !Array.isArray(headers) &&
    typeof (headers as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function'
  );
}

/** A `Connection` value (or several joined) says the connection ends after this head (`close`). */
export function saysClose(value: string | readonly string[] | undefined): boolean {
  if (value === undefined) return false;
  return /(^|,)\s*close\s*(,|$)/i.test(typeof value === 'string' ? value : value.join(','));
}
