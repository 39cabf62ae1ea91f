/**
 * A private NATS server for tests that need their own broker or configuration (auth, TLS, a fresh JetStream store
 * to kill services against): free loopback port, config and JetStream store in a temp dir, stopped and removed by
 * `stop()`. It runs as a Testcontainers container of the local NATS image (scripts/build-nats-image.sh, the image
 * the cluster runs) when Docker and the image are there, else as a nats-server child process; FEDBIOT_TEST_NATS=
 * container|process forces one (container fails loudly without Docker). `via` says which one a test got.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NATS_SERVER_BIN = process.env['NATS_SERVER_BIN'] ?? '/usr/sbin/nats-server';
export const NATS_IMAGE = process.env['FEDBIOT_NATS_IMAGE'] ?? 'local/nats:2.9.10';

/** Why the NATS image cannot be run through Docker, or null when it can. */
function containerUnavailable(): string | null {
  const r = spawnSync('docker', ['image', 'inspect', '--format', '{{.Id}}', NATS_IMAGE], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (r.error) return `docker: ${r.error.message}`;
  if (r.status !== 0) return `docker image inspect ${NATS_IMAGE}: ${r.stderr.trim().split('\n').at(-1)}`;
  return null;
}

type Via = 'container' | 'process';
function chooseVia(): { via: Via; why: string } {
  const forced = process.env['FEDBIOT_TEST_NATS'];
  if (forced !== undefined && forced !== 'container' && forced !== 'process')
    throw new Error(`FEDBIOT_TEST_NATS: ${forced} is neither "container" nor "process"`);
  const noContainer = forced === 'process' ? 'FEDBIOT_TEST_NATS=process' : containerUnavailable();
  if (forced === 'container' && noContainer) throw new Error(`FEDBIOT_TEST_NATS=container, but ${noContainer}`);
  return noContainer ? { via: 'process', why: noContainer } : { via: 'container', why: NATS_IMAGE };
}
let chosen: { via: Via; why: string } | undefined;
/** How private servers run in this process: decided once, announced once on stderr. */
export function privateNatsVia(): Via {
  if (chosen === undefined) {
    chosen = chooseVia();
    console.error(
      chosen.via === 'container'
        ? `private NATS servers: Testcontainers, image ${chosen.why}`
        : `private NATS servers: nats-server child processes (no container: ${chosen.why})`,
    );
  }
  return chosen.via;
}

/** True when a private server can be started one way or the other. */
export const hasNatsServer = existsSync(NATS_SERVER_BIN) || containerUnavailable() === null;

export interface PrivateNats {
  /** How it runs: a Testcontainers container of NATS_IMAGE, or a child process of NATS_SERVER_BIN. */
  readonly via: Via;
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  /** stderr of the server so far (its log). */
  log(): string;
  /**
   * A broker outage: kills the server (SIGKILL for a process, a stopped container), keeps it down for `downMs`,
   * then starts it again on the same port, config and JetStream store, and resolves once it accepts connections.
   */
  outage(downMs: number): Promise<void>;
  stop(): Promise<void>;
}

/** A loopback TCP port free at the time of the call (released again: the caller's server binds it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Whether something accepts connections on 127.0.0.1:`port`. */
export async function portOpen(port: number): Promise<boolean> {
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
 * validates it with `-t` (when the binary is on this host), starts the server and waits until it accepts
 * connections. The container shares the host's network and sees the temp dir at the same path, so `extra` may
 * name files it wrote there.
 */
export async function startPrivateNats(extra: (dir: string) => string | Promise<string>): Promise<PrivateNats> {
  const dir = await mkdtemp(join(tmpdir(), 'fl-nats-'));
  const port = await freePort();
  const conf = join(dir, 'nats.conf');
  await writeFile(
    conf,
    `listen: "127.0.0.1:${port}"\njetstream { store_dir: ${JSON.stringify(join(dir, 'js'))} }\n${await extra(dir)}`,
  );
  if (existsSync(NATS_SERVER_BIN)) {
    const check = checkConfig(conf);
    if (check.status !== 0) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`nats-server -t rejected the generated config: ${check.output}`);
    }
  }
  const launch = async (): Promise<RunningServer> =>
    privateNatsVia() === 'container' ? runContainer(dir, conf) : runProcess(conf);
  let server = await launch();
  let earlierLogs = '';
  const log = (): string => earlierLogs + server.log();
  const stop = async (): Promise<void> => {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  };
  const listening = async (): Promise<void> => {
    const until = Date.now() + 30_000;
    while (!(await portOpen(port))) {
      if (server.exited() || Date.now() > until) {
        await stop();
        throw new Error(`nats-server (${server.via}) did not start on port ${port}: ${log()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await listening();
  const outage = async (downMs: number): Promise<void> => {
    await server.kill();
    earlierLogs = log();
    await new Promise((r) => setTimeout(r, downMs));
    server = await launch();
    await listening();
  };
  return { via: server.via, port, url: `nats://127.0.0.1:${port}`, dir, log, outage, stop };
}

interface RunningServer {
  readonly via: Via;
  log(): string;
  exited(): boolean;
  /** Ends it at once (a crash: SIGKILL, or the container stopped without grace). */
  kill(): Promise<void>;
  stop(): Promise<void>;
}

function runProcess(conf: string): RunningServer {
  const child: ChildProcess = spawn(NATS_SERVER_BIN, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    via: 'process',
    log: () => log,
    exited: () => !running(),
    kill: async () => {
      if (!running()) return;
      child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      if (!running()) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

async function runContainer(dir: string, conf: string): Promise<RunningServer> {
  // Before the first import of testcontainers, which reads them: Ryuk's image would come from Docker Hub, and the
  // host override skips the "inside a container" probe that pulls alpine.
  process.env['TESTCONTAINERS_RYUK_DISABLED'] ??= 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] ??= 'localhost';
  const { GenericContainer, Wait } = await import('testcontainers');
  let log = '';
  let ended = false;
  const container = await new GenericContainer(NATS_IMAGE)
    .withNetworkMode('host')
    .withBindMounts([{ source: dir, target: dir, mode: 'rw' }])
    .withCommand(['-c', conf])
    .withLogConsumer((stream) => {
      stream.on('data', (b: Buffer | string) => (log += b.toString()));
      stream.once('end', () => (ended = true));
    })
    .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
    .withStartupTimeout(30_000)
    .start()
    .catch((e: unknown) => {
      throw new Error(`NATS container (${NATS_IMAGE}) did not start: ${(e as Error).message}\n${log}`, { cause: e });
    });
  let stopped: Promise<unknown> | undefined;
  return {
    via: 'container',
    log: () => log,
    exited: () => ended,
    kill: async () => {
      stopped ??= container.stop({ timeout: 0 }).catch(() => {});
      await stopped;
    },
    stop: async () => {
      stopped ??= container.stop({ timeout: 2000 }).catch(() => {});
      await stopped;
    },
  };
}
