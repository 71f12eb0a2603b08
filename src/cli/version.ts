/** `--version`: multileg's, undici's and Node's versions, and whether the kerberos addon is installed. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function packageVersion(path: string | URL): string {
  try {
    return (JSON.parse(readFileSync(path, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** multileg's own version (from its package.json, beside dist/ and src/). */
export const MULTILEG_VERSION = packageVersion(new URL('../../package.json', import.meta.url));

/** Whether the optional `kerberos` package can be resolved (loading it is doctor's job). */
export function kerberosInstalled(): string | undefined {
  try {
    return packageVersion(require.resolve('kerberos/package.json'));
  } catch {
    return undefined;
  }
}

export function versionText(): string {
  const undici = (() => {
    try {
      return packageVersion(require.resolve('undici/package.json'));
    } catch {
      return 'unknown';
    }
  })();
  const kerberos = kerberosInstalled();
  return `multileg ${MULTILEG_VERSION} (undici ${undici}; Node ${process.versions.node}; kerberos ${kerberos ?? 'not installed: Negotiate unavailable'})`;
}
