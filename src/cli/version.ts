/**
 * `--version`: multileg's, undici's and Node's versions, and which optional Kerberos backends are
 * installed (koffi for the system GSS-API, the kerberos addon; loading them is doctor's job).
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

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

/**
 * The version of an optional package that can be resolved, else undefined. Its package.json is
 * found beside its entry point: koffi's `exports` do not list `./package.json`.
 */
function installed(name: 'kerberos' | 'koffi'): string | undefined {
  try {
    let dir = dirname(require.resolve(name));
    while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
    return packageVersion(join(dir, 'package.json'));
  } catch {
    return undefined;
  }
}

/** Whether the optional `kerberos` package can be resolved (loading it is doctor's job). */
export const kerberosInstalled = (): string | undefined => installed('kerberos');

export function versionText(): string {
  const undici = (() => {
    try {
      return packageVersion(require.resolve('undici/package.json'));
    } catch {
      return 'unknown';
    }
  })();
  const koffi = installed('koffi');
  const kerberos = kerberosInstalled();
  const backends = [koffi && `koffi ${koffi}`, kerberos && `kerberos ${kerberos}`].filter(Boolean);
  const negotiate =
    backends.length > 0 ? backends.join(', ') : 'neither koffi nor kerberos installed: Negotiate unavailable';
  return `multileg ${MULTILEG_VERSION} (undici ${undici}; Node ${process.versions.node}; ${negotiate})`;
}
