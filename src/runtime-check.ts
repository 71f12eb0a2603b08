/** Imported first by the package entry: fails with a clear message before undici loads (see node-version.ts). */
import { UnsupportedNodeError, unsupportedNode } from './node-version.ts';

const reason = unsupportedNode();
if (reason) throw new UnsupportedNodeError(reason);
