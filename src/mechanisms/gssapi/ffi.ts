/**
 * The system's MIT GSS-API (`libgssapi_krb5.so.2`) through the optional `koffi` FFI package, loaded lazily.
 * Only the calls Negotiate needs: import a name, acquire credentials from a credential store (per-agent
 * ccache / client keytab, never process.env), restrict SPNEGO to Kerberos, and `gss_init_sec_context` with
 * channel bindings. Struct layouts are those of x86_64/arm64 Linux (natural alignment; verified with
 * `offsetof`, see docs/ARCHITECTURE.md). Calls that may talk to a KDC run on koffi's worker threads
 * (`.async`), so a slow KDC never blocks the event loop.
 */
import { MechanismUnavailableError } from '../../errors.ts';

/** The slice of koffi's API used here (typed locally: koffi is optional). */
interface KoffiFunction {
  (...args: unknown[]): unknown;
  async(...args: unknown[]): void;
}
interface KoffiLib {
  func(definition: string): KoffiFunction;
}
interface Koffi {
  load(path: string): KoffiLib;
  struct(name: string, def: Record<string, string>): unknown;
  pointer(name: string, ref: unknown): unknown;
  opaque(name: string): unknown;
  decode(ptr: unknown, type: string, len: number): unknown;
}

/** Opaque GSS handles (koffi passes them as pointer values). */
export type GssHandle = unknown;

/** An output `gss_buffer_desc` as koffi fills it: `value` is a raw pointer owned by GSS-API. */
export interface OutBuffer {
  length?: number | bigint;
  value?: unknown;
}

export interface GssOid {
  readonly length: number;
  readonly elements: Buffer;
}

export interface GssFunctions {
  readonly koffi: Koffi;
  importName: KoffiFunction;
  releaseName: KoffiFunction;
  acquireCredFrom: KoffiFunction;
  setNegMechs: KoffiFunction;
  inquireCred: KoffiFunction;
  releaseCred: KoffiFunction;
  displayName: KoffiFunction;
  canonicalizeName: KoffiFunction;
  initSecContext: KoffiFunction;
  deleteSecContext: KoffiFunction;
  releaseBuffer: KoffiFunction;
  displayStatus: KoffiFunction;
}

const oid = (hex: string): GssOid => {
  const elements = Buffer.from(hex, 'hex');
  return { length: elements.length, elements };
};
/** 1.2.840.113554.1.2.1.4 */
export const NT_HOSTBASED_SERVICE = oid('2a864886f71201020104');
/** 1.2.840.113554.1.2.1.1 */
export const NT_USER_NAME = oid('2a864886f71201020101');
/** 1.2.840.113554.1.2.2 */
export const MECH_KRB5 = oid('2a864886f712010202');
/** 1.3.6.1.5.5.2 (MIT exports no symbol for it) */
export const MECH_SPNEGO = oid('2b0601050502');

export const GSS_C_INITIATE = 1;
export const GSS_C_INDEFINITE = 0xffffffff;
export const GSS_C_GSS_CODE = 1;
export const GSS_C_MECH_CODE = 2;
export const GSS_S_CONTINUE_NEEDED = 1;
/** Calling or routine error bits of a major status. */
export const isGssError = (major: number): boolean => (major & 0xffff0000) !== 0;

/** The library name per platform; undefined where this binding is not used (SSPI / GSS.framework). */
export function gssLibraryName(platform: NodeJS.Platform = process.platform): string | undefined {
  if (platform === 'linux' || platform === 'freebsd' || platform === 'openbsd') return 'libgssapi_krb5.so.2';
  return undefined;
}

/** The system GSS-API library or `koffi` could not be loaded. */
export class GssapiUnavailableError extends MechanismUnavailableError {
  constructor(fix: string, options?: { cause?: unknown }) {
    super('Negotiate (GSS-API binding)', fix, options);
  }
}

let loaded: Promise<GssFunctions> | undefined;

function declare(koffi: Koffi, lib: KoffiLib): GssFunctions {
  koffi.struct('gss_buffer_desc', { length: 'size_t', value: 'void *' });
  koffi.struct('gss_OID_desc', { length: 'uint32_t', elements: 'void *' });
  koffi.struct('gss_OID_set_desc', { count: 'size_t', elements: 'gss_OID_desc *' });
  koffi.struct('gss_channel_bindings_struct', {
    initiator_addrtype: 'uint32_t',
    initiator_address: 'gss_buffer_desc',
    acceptor_addrtype: 'uint32_t',
    acceptor_address: 'gss_buffer_desc',
    application_data: 'gss_buffer_desc',
  });
  koffi.struct('gss_key_value_element_desc', { key: 'const char *', value: 'const char *' });
  koffi.struct('gss_key_value_set_desc', { count: 'uint32_t', elements: 'gss_key_value_element_desc *' });
  koffi.pointer('gss_name_t', koffi.opaque('gss_name_struct'));
  koffi.pointer('gss_cred_id_t', koffi.opaque('gss_cred_id_struct'));
  koffi.pointer('gss_ctx_id_t', koffi.opaque('gss_ctx_id_struct'));
  const f = (d: string) => lib.func(d);
  return {
    koffi,
    importName: f(
      'uint32_t gss_import_name(_Out_ uint32_t *minor, const gss_buffer_desc *name, const gss_OID_desc *type, _Out_ gss_name_t *out)',
    ),
    releaseName: f('uint32_t gss_release_name(_Out_ uint32_t *minor, _Inout_ gss_name_t *name)'),
    acquireCredFrom: f(
      'uint32_t gss_acquire_cred_from(_Out_ uint32_t *minor, gss_name_t name, uint32_t time_req, const gss_OID_set_desc *mechs, int usage, const gss_key_value_set_desc *store, _Out_ gss_cred_id_t *cred, void *actual_mechs, _Out_ uint32_t *time_rec)',
    ),
    setNegMechs: f(
      'uint32_t gss_set_neg_mechs(_Out_ uint32_t *minor, gss_cred_id_t cred, const gss_OID_set_desc *mechs)',
    ),
    inquireCred: f(
      'uint32_t gss_inquire_cred(_Out_ uint32_t *minor, gss_cred_id_t cred, _Out_ gss_name_t *name, _Out_ uint32_t *lifetime, void *usage, void *mechs)',
    ),
    releaseCred: f('uint32_t gss_release_cred(_Out_ uint32_t *minor, _Inout_ gss_cred_id_t *cred)'),
    displayName: f(
      'uint32_t gss_display_name(_Out_ uint32_t *minor, gss_name_t name, _Out_ gss_buffer_desc *out, void *type)',
    ),
    canonicalizeName: f(
      'uint32_t gss_canonicalize_name(_Out_ uint32_t *minor, gss_name_t name, const gss_OID_desc *mech, _Out_ gss_name_t *out)',
    ),
    initSecContext: f(
      'uint32_t gss_init_sec_context(_Out_ uint32_t *minor, gss_cred_id_t cred, _Inout_ gss_ctx_id_t *ctx, gss_name_t target, const gss_OID_desc *mech, uint32_t flags, uint32_t time_req, const gss_channel_bindings_struct *cb, const gss_buffer_desc *input, void *actual_mech, _Out_ gss_buffer_desc *output, _Out_ uint32_t *ret_flags, _Out_ uint32_t *time_rec)',
    ),
    deleteSecContext: f(
      'uint32_t gss_delete_sec_context(_Out_ uint32_t *minor, _Inout_ gss_ctx_id_t *ctx, void *output)',
    ),
    releaseBuffer: f('uint32_t gss_release_buffer(_Out_ uint32_t *minor, _Inout_ gss_buffer_desc *buf)'),
    displayStatus: f(
      'uint32_t gss_display_status(_Out_ uint32_t *minor, uint32_t status, int type, const gss_OID_desc *mech, _Inout_ uint32_t *msg_ctx, _Out_ gss_buffer_desc *out)',
    ),
  };
}

/**
 * Loads koffi and the system GSS-API library once. A missing package or library becomes
 * {@link GssapiUnavailableError} naming what to install; a later call tries again.
 */
export function loadGssFunctions(): Promise<GssFunctions> {
  loaded ??= (async () => {
    const name = gssLibraryName();
    if (!name) {
      throw new GssapiUnavailableError(
        `the GSS-API binding is used on Linux and the BSDs only (this is ${process.platform}); the 'kerberos' package serves this platform`,
      );
    }
    let koffi: Koffi;
    try {
      const mod = (await import('koffi')) as unknown as Koffi & { default?: Koffi };
      koffi = typeof mod.load === 'function' ? mod : (mod.default as Koffi);
    } catch (e) {
      loaded = undefined;
      throw new GssapiUnavailableError("install the optional 'koffi' package (npm install koffi)", { cause: e });
    }
    let lib: KoffiLib;
    try {
      lib = koffi.load(name);
    } catch (e) {
      loaded = undefined;
      throw new GssapiUnavailableError(
        `the system library ${name} (MIT Kerberos GSS-API) is missing: install libgssapi-krb5-2 (Debian/Ubuntu) or krb5-libs (Fedora/RHEL)`,
        { cause: e },
      );
    }
    try {
      return declare(koffi, lib);
    } catch (e) {
      loaded = undefined;
      // e.g. Heimdal's libgssapi: no gss_acquire_cred_from / gss_set_neg_mechs.
      throw new GssapiUnavailableError(
        `${name} lacks a GSS-API call this binding needs (MIT Kerberos 1.11 or later provides them all)`,
        { cause: e },
      );
    }
  })();
  return loaded;
}

/** Copies a GSS-owned output buffer into a Node Buffer and releases it (koffi.decode: no external view kept). */
export function takeBuffer(g: GssFunctions, out: OutBuffer): Buffer {
  const len = Number(out.length ?? 0);
  let copy: Buffer = Buffer.alloc(0);
  if (len > 0 && out.value) {
    // decode copies into a Uint8Array of its own: wrapped, not copied again.
    const bytes = g.koffi.decode(out.value, 'uint8_t', len) as Uint8Array<ArrayBuffer>;
    copy = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  }
  if (out.value) g.releaseBuffer([0], out);
  return copy;
}

/** `major: minor` text of a GSS status, as `gss_display_status` words it. */
export function statusText(g: GssFunctions, major: number, minor: number, mech: GssOid | null): string {
  const parts: string[] = [];
  const collect = (code: number, type: number) => {
    const ctx = [0];
    for (let i = 0; i < 8; i++) {
      const out: OutBuffer = {};
      const m = g.displayStatus([0], code, type, type === GSS_C_MECH_CODE ? mech : null, ctx, out) as number;
      if (isGssError(m)) break;
      // (Some mechanisms count the C string's NUL in the buffer's length: gss-ntlmssp's, under SPNEGO.)
      const text = takeBuffer(g, out).toString('utf8').replace(/\0+$/, '');
      if (text) parts.push(text);
      if (ctx[0] === 0) break;
    }
  };
  collect(major, GSS_C_GSS_CODE);
  if (minor !== 0) collect(minor, GSS_C_MECH_CODE);
  return parts.join(': ');
}

/**
 * Most GSS-API calls on libuv's worker threads at once, over the whole process. koffi's `.async`
 * runs on libuv's pool (UV_THREADPOOL_SIZE, 4 by default), which `dns.lookup`, `fs`, zlib and
 * crypto share with every other agent: a KDC that never answers holds a `gss_init_sec_context`
 * on its thread for MIT's whole retry schedule (~27 s), so a burst of such calls would take every
 * thread and stall unrelated DNS lookups and file reads (review r43). Two leaves the other threads
 * (two of the default four) to DNS and fs; a process that raises UV_THREADPOOL_SIZE still runs two
 * at a time here: one stuck KDC must not take more. (A second origin's calls queue behind stuck
 * ones; the time they spend queued is not blamed on their KDC: see `onState`.)
 */
export const GSS_WORKER_CALLS = 2;

/** A queued call that was never started: its caller had given up (its deadline passed, its request was aborted). */
export class GssCallAbandonedError extends Error {
  constructor() {
    super('GSS-API call not started: its caller gave up waiting for a worker');
    this.name = 'GssCallAbandonedError';
  }
}

interface Queued {
  readonly start: () => void;
  readonly gaveUp: (() => boolean) | undefined;
  readonly reject: (err: Error) => void;
}

let onWorkers = 0;
const waiting: Queued[] = [];

/** Starts queued calls while a worker slot is free; one whose caller gave up is dropped, not started. */
function next(): void {
  while (onWorkers < GSS_WORKER_CALLS && waiting.length > 0) {
    const q = waiting.shift()!;
    if (q.gaveUp?.()) {
      q.reject(new GssCallAbandonedError());
      continue;
    }
    q.start();
  }
}

/** Rejects and removes the queued calls whose callers gave up (review r46: else kept until a slot frees, ~27 s). */
function dropAbandoned(): void {
  for (let i = waiting.length - 1; i >= 0; i--) {
    const q = waiting[i]!;
    if (!q.gaveUp?.()) continue;
    waiting.splice(i, 1);
    q.reject(new GssCallAbandonedError());
  }
}

/** GSS-API calls on workers now, and waiting for one (for tests and diagnostics). */
export function gssCallsPending(): { running: number; queued: number } {
  return { running: onWorkers, queued: waiting.length };
}

/**
 * Runs a koffi function on its worker pool and resolves with its return value, at most
 * {@link GSS_WORKER_CALLS} at once process-wide (the rest queue, first come first served).
 * `gaveUp`: asked when the call's turn comes; true rejects it with {@link GssCallAbandonedError}
 * and starts nothing (and a queued call whose caller gave up is dropped as others queue, so the
 * queue holds only calls still wanted). `onState`: told as it queues, runs and ends.
 */
export function callAsync(
  fn: KoffiFunction,
  args: unknown[],
  gaveUp?: () => boolean,
  onState?: (state: GssCallState) => void,
): Promise<number> {
  dropAbandoned();
  return new Promise<number>((resolve, reject) => {
    const start = () => {
      onState?.('running');
      onWorkers += 1;
      let over = false;
      try {
        fn.async(...args, (err: unknown, ret: number) => {
          // (Once: the count is the cap, and one callback told twice would lift it.)
          if (over) return;
          over = true;
          onWorkers -= 1;
          onState?.('done');
          next();
          if (err) reject(err);
          else resolve(ret);
        });
      } catch (e) {
        onWorkers -= 1;
        onState?.('done');
        reject(e);
        next();
      }
    };
    const dropped = (err: Error) => {
      onState?.('done');
      reject(err);
    };
    onState?.('queued');
    waiting.push({ start, gaveUp, reject: dropped });
    next();
  });
}

/** Where a GSS-API call on a worker is: waiting in the queue for one, running on one, or over. */
export type GssCallState = 'queued' | 'running' | 'done';
