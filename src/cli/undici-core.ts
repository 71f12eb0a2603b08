/**
 * The parts of undici a `multileg` request uses — `Dispatcher` with its request API, `Client`,
 * `buildConnector`, `errors`, and `Dispatcher1Wrapper` (which the agent imports) — loaded from their own files. undici's index also loads fetch, WebSocket,
 * EventSource, the caches, the interceptors and the mocks, and makes a global Agent: about 90 of
 * the 110 modules a request loaded, a third of the command's start (docs/PERFORMANCE.md "CLI
 * start"). undici has no `exports` map, so its files are the package's to import; they are the
 * very modules its index re-exports (test/cli-undici.test.ts checks they are the same objects).
 * Only the command uses this, through {@link useUndiciCore}; the library imports undici as usual.
 */
import { createRequire, registerHooks } from 'node:module';
import { dirname, join } from 'node:path';
import type * as Undici from 'undici';

const require = createRequire(import.meta.url);

function load(): Pick<typeof Undici, 'Dispatcher' | 'Dispatcher1Wrapper' | 'Client' | 'buildConnector' | 'errors'> {
  // The files of the undici that `require('undici')` finds, by their path in it: a bare
  // 'undici/lib/…' missing there would be looked for in the node_modules of parent folders, and
  // could come from another undici.
  const root = dirname(require.resolve('undici/package.json'));
  const file = (path: string) => require(join(root, path));
  try {
    const Dispatcher = file('lib/dispatcher/dispatcher.js') as typeof Undici.Dispatcher;
    // What undici's index does: request(), stream(), pipeline(), upgrade(), connect() on every dispatcher.
    Object.assign(Dispatcher.prototype, file('lib/api/index.js'));
    return {
      Dispatcher,
      Dispatcher1Wrapper: file('lib/dispatcher/dispatcher1-wrapper.js') as typeof Undici.Dispatcher1Wrapper,
      Client: file('lib/dispatcher/client.js') as typeof Undici.Client,
      buildConnector: file('lib/core/connect.js') as typeof Undici.buildConnector,
      // (Loaded by the Client already: no module more. The agent makes undici's HeadersTimeoutError.)
      errors: file('lib/core/errors.js') as typeof Undici.errors,
    };
  } catch (err) {
    // A later undici that moved its files: the whole package, as the library loads it.
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    return require('undici') as typeof Undici;
  }
}

export const { Dispatcher, Dispatcher1Wrapper, Client, buildConnector, errors } = load();

/** multileg's own modules (dist/ or src/): theirs are the imports of 'undici' this module answers. */
const OWN = new URL('../', import.meta.url).href;

/**
 * Points the `import ... from 'undici'` of multileg's own modules loaded after this call at this
 * module, for this process (the command's request path; Node's module hooks). Anything that
 * imports a name this module lacks fails at link time, loudly, in every command-line test.
 */
export function useUndiciCore(): void {
  registerHooks({
    resolve(specifier, context, nextResolve) {
      if (specifier === 'undici' && context.parentURL?.startsWith(OWN) && context.parentURL !== import.meta.url)
        return { url: import.meta.url, shortCircuit: true };
      return nextResolve(specifier, context);
    },
  });
}
