/**
 * A private nats-server child process for tests that need their own configuration (auth, TLS): free loopback
 * port, config and JetStream store in a temp dir, stopped and removed by `stop()`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NATS_SERVER_BIN = process.env['NATS_SERVER_BIN'] ?? '/usr/sbin/nats-server';
export const hasNatsServer = existsSync(NATS_SERVER_BIN);

export interface PrivateNats {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  /** stderr of the server so far (its log). */
  log(): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = tcpConnect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** `nats-server -t -c <file>`: status and output of the config check. */
export function checkConfig(file: string): { status: number | null; output: string } {
  const r = spawnSync(NATS_SERVER_BIN, ['-t', '-c', file], { encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/**
 * Writes `listen`, a JetStream store in the temp dir and `extra` (authorization, tls blocks) into a config,
 * validates it with `-t`, starts the server and waits until it accepts TCP connections (at most 10 s).
 */
export async function startPrivateNats(extra: (dir: string) => string | Promise<string>): Promise<PrivateNats> {
  const dir = await mkdtemp(join(tmpdir(), 'fl-nats-'));
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  await writeFile(
    conf,
    `listen: "127.0.0.1:${port}"\njetstream { store_dir: ${JSON.stringify(join(dir, 'js'))} }\n${await extra(dir)}`,
  );
  const check = checkConfig(conf);
  if (check.status !== 0) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(`nats-server -t rejected the generated config: ${check.output}`);
  }
  const child: ChildProcess = spawn(NATS_SERVER_BIN, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const until = Date.now() + 10_000;
  while (!(await portOpen(port))) {
    if (child.exitCode !== null || Date.now() > until) {
      await stop();
      throw new Error(`nats-server did not start on port ${port}: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { port, url: `nats://127.0.0.1:${port}`, dir, log: () => log, stop };
}
