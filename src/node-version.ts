/**
 * The Node.js version check, run before anything loads undici: undici 8 dies on older Node with an
 * unhelpful `Cannot read properties of undefined (reading 'bind')`. Imports nothing that needs 22.
 */
import { MultilegError } from './errors.ts';

/** The oldest Node.js multileg runs on (undici 8's own floor). */
export const MIN_NODE_VERSION = '22.19.0';

/** The reason `version` cannot run multileg, or undefined when it can. */
export function unsupportedNode(version: string = process.versions.node): string | undefined {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if (major > 22 || (major === 22 && minor >= 19)) return undefined;
  return `multileg needs Node >= 22.19 (this is Node ${version}); install Node 22 or 24 (https://nodejs.org, or nvm install 22)`;
}

/** Thrown at import on an unsupported Node.js (`MULTILEG_NODE_VERSION`). */
export class UnsupportedNodeError extends MultilegError {
  constructor(reason: string) {
    super('MULTILEG_NODE_VERSION', reason);
  }
}
