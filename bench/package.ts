/**
 * `npm run bench -- package [--models demo,smollm] [--drop-rate 0.2] [--nats URL]`: the emulator package a client
 * receives, per model and storage dtype: bytes (against the full checkpoint), build time on the owner's side, and
 * the time to put it into and get it out of the JetStream Object Store file by file (streamed; what the aggregator
 * and a trainer do), with the peak RSS of each step. Uses the NATS at --nats (default 127.0.0.1:4222); the bucket
 * is deleted afterwards.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Objm } from '@nats-io/obj';
import { BlobStore, connectTransport } from '../libs/protocol/src/index.js';
import { buildEmulatorPackage, splitModel, type PackageDtype } from '../libs/fedbiot/src/index.js';
import { openCheckpoint, parseModelConfig, writeRandomCheckpoint } from '../libs/model/src/index.js';
import { SHAPES } from './shapes.js';
import { argOf, machine, printTable, withPeakRss, writeResults } from './common.js';

const MiB = 2 ** 20;

/** `fn` timed, with the process's peak RSS in MiB while it ran. */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; peakMib: number; seconds: number }> {
  const t0 = performance.now();
  const r = await withPeakRss(fn);
  return { value: r.value, peakMib: Math.round(r.peakRss / MiB), seconds: (performance.now() - t0) / 1000 };
}

async function checkpointBytes(dir: string): Promise<number> {
  return (await stat(join(dir, 'model.safetensors'))).size;
}

export async function main(args: string[]): Promise<void> {
  const models = (argOf(args, 'models') ?? 'demo,smollm').split(',');
  const dropRate = Number(argOf(args, 'drop-rate') ?? 0.2);
  const url = argOf(args, 'nats') ?? process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
  const tmp = await mkdtemp(join(tmpdir(), 'bench-package-'));
  const nc = await connectTransport(url);
  const bucket = `bench-package-${process.pid}`;
  const rows: Record<string, unknown>[] = [];
  try {
    const blobs = await BlobStore.open(nc, { bucket });
    for (const key of models) {
      let source: string;
      if (key === 'demo') source = join(process.cwd(), 'models', 'demo-llama');
      else {
        const shape = SHAPES[key];
        if (!shape) throw new Error(`--models: unknown model ${key} (demo, ${Object.keys(SHAPES).join(', ')})`);
        source = join(tmp, key);
        console.log(`${shape.name}: writing a random checkpoint ...`);
        await writeRandomCheckpoint(source, parseModelConfig(shape.config, `${shape.name}.json`), 1);
      }
      const { config } = await openCheckpoint(source);
      const split = splitModel({ numLayers: config.numLayers, adapterBottom: 0, adapterTop: 2, dropRate });
      for (const dtype of ['float32', 'bfloat16'] as PackageDtype[]) {
        const out = join(tmp, `${key}-${dtype}`);
        const build = await measured(() => buildEmulatorPackage({ source, split, jobId: 'bench', out, dtype }));
        const m = build.value;
        const bytes = m.files.reduce((s, f) => s + f.bytes, 0);
        const put = await measured(async () => {
          for (const f of m.files) await blobs.putFile(join(out, f.path));
        });
        const refs = await Promise.all(m.files.map((f) => blobs.putFile(join(out, f.path)))); // skipped: already there
        const dest = join(tmp, `${key}-${dtype}-client`);
        const get = await measured(async () => {
          for (const [i, f] of m.files.entries()) await blobs.getFile(refs[i]!, join(dest, f.path));
        });
        rows.push({
          case: `${key}-${dtype}`,
          provider: 'cpu',
          machine: machine(),
          layers: `${split.clientLayers.length}/${config.numLayers}`,
          full_mib: +((await checkpointBytes(source)) / MiB).toFixed(1),
          package_mib: +(bytes / MiB).toFixed(1),
          build_s: +build.seconds.toFixed(2),
          put_s: +put.seconds.toFixed(2),
          put_mb_s: +(bytes / 1e6 / put.seconds).toFixed(1),
          get_s: +get.seconds.toFixed(2),
          get_mb_s: +(bytes / 1e6 / get.seconds).toFixed(1),
          peak_rss_build_mib: build.peakMib,
          peak_rss_put_mib: put.peakMib,
          peak_rss_get_mib: get.peakMib,
        });
        await rm(dest, { recursive: true, force: true });
        await rm(out, { recursive: true, force: true });
      }
    }
  } finally {
    await new Objm(nc)
      .open(bucket)
      .then((os) => os.destroy())
      .catch(() => {});
    await nc.close();
    await rm(tmp, { recursive: true, force: true });
  }
  printTable(rows, [
    'case',
    'layers',
    'full_mib',
    'package_mib',
    'build_s',
    'put_mb_s',
    'get_mb_s',
    'peak_rss_build_mib',
    'peak_rss_put_mib',
    'peak_rss_get_mib',
  ]);
  console.log(`wrote ${writeResults('package', rows)} (${machine()}, NATS ${url}, drop rate ${dropRate})`);
}
