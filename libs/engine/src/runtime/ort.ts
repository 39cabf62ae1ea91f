import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type * as OrtModule from 'onnxruntime-node';

/**
 * The onnxruntime-node binding this process runs on, chosen once when the engine is first imported.
 *
 * Why a choice at all: Microsoft's prebuilt CUDA 13 provider is published on npm only for onnxruntime 1.29.0
 * (`npm run setup:cuda`), a provider library must come from the same onnxruntime release as the binding that loads
 * it, and the pinned onnxruntime-node (package.json) is 1.30.0 because 1.29.0's WebGPU provider aborts the process
 * ("double free") in the alignment step on the GPU machine. So setup:cuda installs onnxruntime-node 1.29.0 beside
 * the pinned one, with the CUDA provider in its folder, and a process that trains on CUDA starts with
 * `FEDBIOT_ORT_BINDING=cuda`. One process holds one binding: two onnxruntime builds share the soname
 * libonnxruntime.so.1, so the dynamic loader would hand the second binding the first one's library.
 *
 * FEDBIOT_ORT_BINDING:
 * - unset or `bundled`: the pinned onnxruntime-node from node_modules (CPU, WebGPU);
 * - `cuda`: the copy `npm run setup:cuda` installed under `.cache/onnxruntime-cuda/` of the project;
 * - an absolute path: an onnxruntime-node package folder (one holding its package.json).
 */
export type Ort = typeof OrtModule;

/** The environment variable that picks the binding. */
export const ORT_BINDING_ENV = 'FEDBIOT_ORT_BINDING';

/** Where `npm run setup:cuda` installs the CUDA-capable onnxruntime-node, relative to the project root. */
export const CUDA_BINDING_HOME = join('.cache', 'onnxruntime-cuda');

const require = createRequire(import.meta.url);

/** The pinned onnxruntime-node's package folder (node_modules/onnxruntime-node). */
function bundledPackageDir(): string {
  return dirname(require.resolve('onnxruntime-node/package.json'));
}

/**
 * The folder setup:cuda installs into: `.cache/onnxruntime-cuda` beside the node_modules that holds the pinned
 * onnxruntime-node (the project root), so it survives `npm ci`, which empties node_modules.
 */
export function cudaBindingHome(): string {
  return join(dirname(dirname(bundledPackageDir())), CUDA_BINDING_HOME);
}

/** The onnxruntime-node package folder that `FEDBIOT_ORT_BINDING=cuda` selects. */
export function cudaBindingPackageDir(): string {
  return join(cudaBindingHome(), 'node_modules', 'onnxruntime-node');
}

/**
 * The package folder the variable's value names.
 * @throws Error naming FEDBIOT_ORT_BINDING, the value and what to do, when the folder holds no onnxruntime-node
 */
export function resolveBindingDir(value: string | undefined): string {
  if (value === undefined || value === '' || value === 'bundled') return bundledPackageDir();
  let dir: string;
  if (value === 'cuda') dir = cudaBindingPackageDir();
  else if (isAbsolute(value)) dir = resolve(value);
  else {
    throw new Error(
      `${ORT_BINDING_ENV}=${value}: expected 'bundled', 'cuda' or an absolute path to an onnxruntime-node package folder`,
    );
  }
  const pkg = join(dir, 'package.json');
  let name: unknown;
  try {
    name = (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown }).name;
  } catch {
    name = undefined;
  }
  if (name !== 'onnxruntime-node') {
    const fix = value === 'cuda' ? 'run `npm run setup:cuda` first' : 'point it at an onnxruntime-node package folder';
    throw new Error(
      `${ORT_BINDING_ENV}=${value}: ${existsSync(pkg) ? `${pkg} is not onnxruntime-node's` : `${pkg} does not exist`}; ${fix}`,
    );
  }
  return dir;
}

/** The package folder of the binding in use. */
export const ortPackageDir: string = resolveBindingDir(process.env[ORT_BINDING_ENV]);

/**
 * The binding in use. Every value import of onnxruntime in the engine goes through here, so that tensors and
 * sessions come from one build.
 */
export const ort: Ort = require(ortPackageDir) as Ort;
