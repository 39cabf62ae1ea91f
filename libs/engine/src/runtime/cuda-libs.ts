import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { cudaBindingPackageDir, ORT_BINDING_ENV, ortPackageDir } from './ort.js';

/**
 * Why onnxruntime-node's CUDA provider cannot load, in terms a user can act on. ORT's own error for a missing
 * library is "OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library" (the library's name
 * goes only to ORT's native log on stderr), so the engine finds out itself which file is missing.
 *
 * onnxruntime-node loads `libonnxruntime_providers_shared.so` and `libonnxruntime_providers_cuda.so` from its own
 * binary folder (`bin/napi-v6/<platform>/<arch>/`); the CUDA one needs the CUDA libraries it was linked against
 * (CUDA 13: libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, and the driver's libcuda.so.1),
 * found by the dynamic loader: LD_LIBRARY_PATH as it was when the process started, then ldconfig's cache.
 */

/** The two provider libraries onnxruntime-node needs next to its binding for the CUDA provider. */
export const CUDA_PROVIDER_FILES = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'] as const;

/** Written by `npm run setup:cuda` next to the provider libraries: what it installed and for which onnxruntime. */
export const CUDA_PROVIDER_MARKER = 'libonnxruntime_providers_cuda.install.json';

/** How to get the provider libraries and their CUDA libraries; appended to every CUDA diagnosis. */
export const CUDA_INSTALL_HINT =
  'install the provider with `npm run setup:cuda` (onnxruntime-node 1.29.0 with its CUDA 13 provider, both from ' +
  'npm, beside the pinned onnxruntime-node) and start node with FEDBIOT_ORT_BINDING=cuda, or, where NuGet is ' +
  'reachable, `ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci --ignore-scripts=false` (CUDA 12 + cuDNN 9); put the folder ' +
  'that holds the CUDA libraries on LD_LIBRARY_PATH before starting node (e.g. /usr/local/cuda/lib64, or a ' +
  "Python environment's site-packages/nvidia/cu13/lib)";

/** What {@link diagnoseCuda} found. */
export interface CudaDiagnosis {
  /** onnxruntime-node's binary folder, where the provider libraries must be. */
  readonly binDir: string | undefined;
  /** Provider libraries absent from binDir. */
  readonly missingFiles: readonly string[];
  /** Libraries the CUDA provider links against that the dynamic loader cannot load, with its reason. */
  readonly unloadable: readonly { readonly name: string; readonly reason: string }[];
  /** The installed provider was made for another onnxruntime version (from setup:cuda's marker), if known. */
  readonly versionMismatch?: { readonly provider: string; readonly onnxruntime: string };
  /** One sentence naming what is wrong, or undefined when every file and library loads (then the GPU/driver failed). */
  readonly summary: string | undefined;
}

/** The folder onnxruntime-node (the binding in use, ort.ts) loads its binding and provider libraries from. */
export function ortBinaryDir(packageDir: string = ortPackageDir): string | undefined {
  const bin = join(packageDir, 'bin');
  const napi = existsSync(bin) ? readdirSync(bin).filter((d) => /^napi-v\d+$/.test(d)) : [];
  // binding.js requires bin/napi-v6/<platform>/<arch>/; prefer v6, else the highest present.
  napi.sort((a, b) => Number(b.slice(6)) - Number(a.slice(6)));
  const chosen = napi.includes('napi-v6') ? 'napi-v6' : napi[0];
  return chosen === undefined ? undefined : join(bin, chosen, process.platform, process.arch);
}

/** The version of onnxruntime-node in use (ort.ts), or undefined. */
export function ortVersion(packageDir: string = ortPackageDir): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

function readAt(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  const n = readSync(fd, buf, 0, length, position);
  return buf.subarray(0, n);
}

/**
 * The DT_NEEDED entries (sonames of the libraries it links against) of a 64-bit little-endian ELF shared object.
 * Reads only the headers and the dynamic section, not the whole file.
 * @throws Error when the file is not such an ELF
 */
export function elfNeeded(path: string): string[] {
  const fd = openSync(path, 'r');
  try {
    const eh = readAt(fd, 64, 0);
    if (eh.length < 64 || eh.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${path}: not an ELF file`);
    if (eh[4] !== 2 || eh[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF file`);
    const phoff = Number(eh.readBigUInt64LE(32));
    const phentsize = eh.readUInt16LE(54);
    const phnum = eh.readUInt16LE(56);
    const ph = readAt(fd, phentsize * phnum, phoff);
    const loads: { vaddr: number; offset: number; filesz: number }[] = [];
    let dyn: { offset: number; size: number } | undefined;
    for (let i = 0; i < phnum; i++) {
      const p = i * phentsize;
      const type = ph.readUInt32LE(p);
      const offset = Number(ph.readBigUInt64LE(p + 8));
      const vaddr = Number(ph.readBigUInt64LE(p + 16));
      const filesz = Number(ph.readBigUInt64LE(p + 32));
      if (type === 1) loads.push({ vaddr, offset, filesz }); // PT_LOAD
      if (type === 2) dyn = { offset, size: filesz }; // PT_DYNAMIC
    }
    if (dyn === undefined) return [];
    const d = readAt(fd, dyn.size, dyn.offset);
    const needed: number[] = [];
    let strtab = -1;
    let strsz = 0;
    for (let p = 0; p + 16 <= d.length; p += 16) {
      const tag = Number(d.readBigInt64LE(p));
      const val = Number(d.readBigUInt64LE(p + 8));
      if (tag === 0) break; // DT_NULL
      if (tag === 1) needed.push(val); // DT_NEEDED
      if (tag === 5) strtab = val; // DT_STRTAB (an address)
      if (tag === 10) strsz = val; // DT_STRSZ
    }
    const seg = loads.find((l) => strtab >= l.vaddr && strtab < l.vaddr + l.filesz);
    if (seg === undefined || strsz === 0) return [];
    const strings = readAt(fd, strsz, seg.offset + (strtab - seg.vaddr));
    return needed.map((off) => {
      const end = strings.indexOf(0, off);
      return strings.toString('latin1', off, end < 0 ? strings.length : end);
    });
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether the dynamic loader finds and loads `soname` from this process (same search as for a dlopen'ed library's
 * dependencies without RUNPATH: LD_LIBRARY_PATH at process start, ldconfig's cache, the default folders).
 * @returns undefined when it loads, otherwise the loader's reason
 */
export function libraryLoadProblem(soname: string): string | undefined {
  try {
    process.dlopen({ exports: {} }, soname, constants.dlopen.RTLD_LAZY);
    return undefined;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    // Loaded, but it is not a Node addon: exactly what we wanted to know.
    if (/self-register|napi_register_module|did not self-register/i.test(msg)) return undefined;
    return msg.replace(/^.*?:\s*(?=cannot open|undefined symbol|version)/, '').trim();
  }
}

/**
 * Finds out why the CUDA provider does not load: provider libraries missing from onnxruntime-node's folder, a
 * provider installed for another onnxruntime version, or CUDA libraries the loader cannot find.
 * @param binDir where onnxruntime-node loads provider libraries from (default: the installed package's folder)
 * @param onnxruntime the onnxruntime-node version (default: the installed package's)
 */
export function diagnoseCuda(
  binDir: string | undefined = ortBinaryDir(),
  onnxruntime: string | undefined = ortVersion(),
): CudaDiagnosis {
  if (binDir === undefined) {
    return { binDir, missingFiles: [...CUDA_PROVIDER_FILES], unloadable: [], summary: 'onnxruntime-node not found' };
  }
  const missingFiles = CUDA_PROVIDER_FILES.filter((f) => !existsSync(join(binDir, f)));
  if (missingFiles.length > 0) {
    const cudaCopy = ortBinaryDir(cudaBindingPackageDir());
    const installedBeside =
      cudaCopy !== undefined && cudaCopy !== binDir && CUDA_PROVIDER_FILES.every((f) => existsSync(join(cudaCopy, f)));
    return {
      binDir,
      missingFiles,
      unloadable: [],
      summary:
        `${missingFiles.join(' and ')} ${missingFiles.length > 1 ? 'are' : 'is'} not in ${binDir}` +
        (installedBeside
          ? `; setup:cuda installed the CUDA provider with its own onnxruntime-node in ${cudaCopy}: start node ` +
            `with ${ORT_BINDING_ENV}=cuda to use it`
          : ''),
    };
  }
  let versionMismatch: CudaDiagnosis['versionMismatch'];
  try {
    const marker = JSON.parse(readFileSync(join(binDir, CUDA_PROVIDER_MARKER), 'utf8')) as { onnxruntime?: string };
    if (marker.onnxruntime !== undefined && onnxruntime !== undefined && marker.onnxruntime !== onnxruntime) {
      versionMismatch = { provider: marker.onnxruntime, onnxruntime };
    }
  } catch {
    // No marker (installed by onnxruntime-node's own NuGet step, or by hand): nothing to compare.
  }
  let needed: string[] = [];
  try {
    needed = elfNeeded(join(binDir, 'libonnxruntime_providers_cuda.so'));
  } catch {
    // Not an ELF we can read: the loader's own error (ORT's message) is all there is.
  }
  const unloadable = needed
    .map((name) => ({ name, reason: libraryLoadProblem(name) }))
    .filter((r): r is { name: string; reason: string } => r.reason !== undefined);
  const parts: string[] = [];
  if (versionMismatch !== undefined) {
    parts.push(
      `the CUDA provider in ${binDir} was built for onnxruntime ${versionMismatch.provider} but onnxruntime-node is ` +
        `${versionMismatch.onnxruntime} (they must match)`,
    );
  }
  if (unloadable.length > 0) {
    parts.push(
      `libonnxruntime_providers_cuda.so needs ${unloadable.map((u) => u.name).join(', ')}, which the dynamic loader ` +
        `cannot load (${unloadable[0]!.reason})`,
    );
  }
  return {
    binDir,
    missingFiles,
    unloadable,
    ...(versionMismatch ? { versionMismatch } : {}),
    summary: parts.join('; ') || undefined,
  };
}
