/**
 * Streaming file transfer through the JetStream Object Store (libs/protocol/src/file-transfer.ts): putFile and
 * getFile of one file of random bytes (default 2 GiB), MB/s each way and the peak RSS of this process during each
 * (process.memoryUsage().rss sampled every 20 ms; the goal is under 300 MiB whatever the file size).
 *
 * By default it starts its own nats-server child process with a file store in a temp dir sized for the file (the
 * machine's shared server may not allow a multi-GB stream), and removes the bucket, the store and the temp files
 * afterwards; `--nats URL` uses an existing server instead. It checks free disk first: the source file, the
 * downloaded copy and the stream each take the file's size.
 *
 * `npm run bench -- transfer [--size-mib 2048] [--nats URL] [--batch 16] [--window 8]` writes bench/results/transfer.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, open, rm, statfs, writeFile } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm, StorageType } from '@nats-io/obj';
import { connectTransport, getFile, putFile, transferClient } from '../libs/protocol/src/index.js';
import { argOf, freePort, machine, printTable, withPeakRss, writeResults } from './common.js';

const MiB = 1 << 20;
const NATS_SERVER_BIN = process.env['NATS_SERVER_BIN'] ?? '/usr/sbin/nats-server';

/** Writes `size` pseudo-random bytes (8 MiB of crypto randomness, re-keyed per block so blocks differ). */
async function writeRandomFile(path: string, size: number): Promise<string> {
  const fh = await open(path, 'w');
  const hash = createHash('sha256');
  const block = Buffer.allocUnsafe(8 * MiB);
  try {
    for (let off = 0; off < size; off += block.length) {
      const part = block.subarray(0, Math.min(block.length, size - off));
      randomFillSync(part);
      hash.update(part);
      await fh.write(part, 0, part.length, off);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

interface Server {
  readonly url: string;
  /** The server process's peak RSS (VmHWM) in MiB, where /proc tells. */
  peakRssMib(): number | undefined;
  stop(): Promise<void>;
}

/** A nats-server child with JetStream on a file store in `dir`, allowed `maxFileStore` bytes. */
async function startServer(dir: string, maxFileStore: number): Promise<Server> {
  if (!existsSync(NATS_SERVER_BIN))
    throw new Error(`${NATS_SERVER_BIN} not found (set NATS_SERVER_BIN, or pass --nats URL)`);
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  await writeFile(
    conf,
    `listen: "127.0.0.1:${port}"\njetstream { store_dir: ${JSON.stringify(join(dir, 'js'))}, max_file_store: ${maxFileStore} }\n`,
  );
  const child: ChildProcess = spawn(NATS_SERVER_BIN, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (const until = Date.now() + 20_000; ;) {
    const accepting = await new Promise<boolean>((r) => {
      const s = tcpConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), r(true)));
      s.once('error', () => r(false));
    });
    if (accepting) break;
    if (child.exitCode !== null || Date.now() > until) throw new Error(`nats-server did not start: ${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    peakRssMib: () => {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      return m ? Math.round(Number(m[1]) / 1024) : undefined;
    },
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Fails early when `dir`'s file system cannot hold `bytes` more (with 1 GiB to spare). */
async function requireFree(dir: string, bytes: number): Promise<void> {
  const s = await statfs(dir);
  const free = s.bavail * s.bsize;
  if (free < bytes + 1024 * MiB)
    throw new Error(
      `${dir}: ${(free / 2 ** 30).toFixed(1)} GiB free, the run needs ${((bytes + 1024 * MiB) / 2 ** 30).toFixed(1)}`,
    );
}

export async function main(args: string[]): Promise<void> {
  const sizeMib = Number(argOf(args, 'size-mib') ?? 2048);
  if (!(sizeMib > 0)) throw new Error('--size-mib: a positive number of MiB');
  const size = Math.round(sizeMib * MiB);
  const external = argOf(args, 'nats');
  const batch = Number(argOf(args, 'batch') ?? 16);
  const window = Number(argOf(args, 'window') ?? 8);
  const dir = await mkdtemp(join(tmpdir(), 'fl-transfer-'));
  let server: Server | undefined;
  let nc: NatsConnection | undefined;
  const bucket = `bench-transfer-${process.pid}`;
  try {
    await requireFree(dir, (external ? 2 : 3) * size);
    if (external === undefined) server = await startServer(dir, size + 1024 * MiB);
    const url = external ?? server!.url;
    console.log(`transfer: ${sizeMib} MiB through ${external ? url : `a private nats-server (file store in ${dir})`}`);
    const src = join(dir, 'source.bin');
    const sha = await writeRandomFile(src, size);
    nc = await connectTransport(url, { timeoutMs: 5000 });
    const c = await transferClient(nc);
    const os = await new Objm(nc).create(bucket, { storage: StorageType.File });
    try {
      const rows: Record<string, unknown>[] = [];
      const row = (kind: string, seconds: number, peakRss: number, rssBefore: number): Record<string, unknown> => ({
        case: kind,
        provider: 'nats-file-store',
        size_mib: sizeMib,
        seconds: +seconds.toFixed(2),
        mb_s: +(size / 1e6 / seconds).toFixed(1),
        mib_s: +(size / MiB / seconds).toFixed(1),
        peak_rss_mib: Math.round(peakRss / MiB),
        rss_before_mib: Math.round(rssBefore / MiB),
        batch,
        window,
        // The 2-core dev box is shared: the load next to the numbers says how much of it this run had.
        load_1m: +loadavg()[0]!.toFixed(2),
        machine: machine(),
        date: new Date().toISOString(),
      });

      global.gc?.();
      let rss0 = process.memoryUsage().rss;
      let t0 = performance.now();
      const put = await withPeakRss(() => putFile(c, bucket, 'file.bin', src, { window }));
      rows.push(row('put', (performance.now() - t0) / 1000, put.peakRss, rss0));
      if (put.value.sha256 !== sha) throw new Error(`put: sha256 ${put.value.sha256}, the file's is ${sha}`);

      const dest = join(dir, 'copy.bin');
      global.gc?.();
      rss0 = process.memoryUsage().rss;
      t0 = performance.now();
      const got = await withPeakRss(() => getFile(c, bucket, 'file.bin', dest, { batch }));
      rows.push(row('get', (performance.now() - t0) / 1000, got.peakRss, rss0));
      if (got.value.sha256 !== sha || got.value.chunksFetched !== put.value.meta.chunks)
        throw new Error(`get: ${got.value.chunksFetched} chunks, sha256 ${got.value.sha256}; expected ${sha}`);

      const serverRss = server?.peakRssMib();
      for (const r of rows) r['server_peak_rss_mib'] = serverRss;
      printTable(rows, ['case', 'size_mib', 'seconds', 'mb_s', 'mib_s', 'peak_rss_mib', 'rss_before_mib', 'load_1m']);
      console.log(
        `chunks: ${put.value.meta.chunks} of ${put.value.meta.options?.max_chunk_size} bytes; sha256 verified both ways` +
          (serverRss === undefined ? '' : `; nats-server peak RSS ${serverRss} MiB`),
      );
      console.log(`wrote ${writeResults('transfer', rows)}`);
    } finally {
      await os.destroy().catch(() => {});
    }
  } finally {
    await nc?.close();
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
