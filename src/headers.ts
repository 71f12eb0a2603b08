/** Request headers normalised to lower-case names; repeated headers become arrays. */
export type HeaderMap = Record<string, string | string[]>;

/**
 * undici accepts request headers as an object, a flat `[k, v, k, v]` array, or an iterable of
 * pairs, depending on the caller (fetch passes an object, `request()` whatever it was given).
 */
export function normalizeRequestHeaders(headers: unknown): HeaderMap {
  const out: HeaderMap = {};
  const add = (k: unknown, v: unknown) => {
    if (v === undefined || v === null) return;
    const key = String(k).toLowerCase();
    const values = Array.isArray(v) ? v.map(String) : [String(v)];
    const prev = out[key];
    if (prev === undefined) out[key] = values.length === 1 ? values[0]! : values;
    else out[key] = [...(Array.isArray(prev) ? prev : [prev]), ...values];
  };
  if (headers == null) return out;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const pair of headers as unknown[][]) add(pair[0], pair[1]);
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1]);
    }
    return out;
  }
  if (
    typeof headers === 'object' &&
    Symbol.iterator in headers &&
    typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function'
  ) {
    for (const pair of headers as Iterable<[unknown, unknown]>) add(pair[0], pair[1]);
    return out;
  }
  for (const [k, v] of Object.entries(headers as Record<string, unknown>)) add(k, v);
  return out;
}
