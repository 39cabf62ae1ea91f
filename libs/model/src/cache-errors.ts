/**
 * Disk errors of the model cache that say where and what to change. Node's own ENOSPC from a write names no path
 * ("no space left on device, write"), and an EACCES on `graphs/<hash>` does not say that FEDBIOT_CACHE chose it.
 */
const DISK_CODES: Readonly<Record<string, string>> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
};

/** A write under the model cache failed for lack of space or permission. */
export class CacheDiskError extends Error {
  override readonly name = 'CacheDiskError';
  constructor(
    readonly path: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    const env = process.env['FEDBIOT_CACHE'];
    const setting = env === undefined ? 'FEDBIOT_CACHE (unset: ~/.cache/fedbiot)' : `FEDBIOT_CACHE=${env}`;
    const fix =
      code === 'ENOSPC' || code === 'EDQUOT'
        ? `free space there (npm run model -- prune-cache) or point FEDBIOT_CACHE at a disk with room`
        : 'make it writable or point FEDBIOT_CACHE at a writable folder';
    super(`${path}: ${DISK_CODES[code] ?? code} (${code}); the model cache is set by ${setting}: ${fix}`, options);
  }
}

/** Runs `fn`; a space or permission error becomes a CacheDiskError naming `path`; anything else passes through. */
export function onCacheDisk<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw wrap(path, e);
  }
}

/** As onCacheDisk, for async work. */
export async function onCacheDiskAsync<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw wrap(path, e);
  }
}

function wrap(path: string, e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && code in DISK_CODES ? new CacheDiskError(path, code, { cause: e }) : e;
}
