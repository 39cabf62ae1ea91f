/**
 * A private 3-node (or n-node) JetStream cluster of nats-server child processes on loopback, for tests of
 * replicated state: each node has its own client port, route port and JetStream store; `kill(i)` stops one node
 * (SIGKILL: a crash, not a clean shutdown) and `restart(i)` starts it again on the same store, as a pod rescheduled
 * with its volume would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, NATS_SERVER_BIN, portOpen } from './nats-server.js';

export const hasNatsServerBinary = existsSync(NATS_SERVER_BIN);

export interface NatsClusterNode {
  readonly name: string;
  readonly port: number;
  readonly url: string;
}

export interface NatsCluster {
  readonly nodes: readonly NatsClusterNode[];
  /** All client URLs: a client given these reconnects to a surviving node. */
  readonly servers: string[];
  /** SIGKILLs node `i` (by index or server name). */
  kill(node: number | string): Promise<void>;
  /** Starts node `i` again on its store and waits until it accepts clients. */
  restart(node: number | string): Promise<void>;
  log(node: number | string): string;
  stop(): Promise<void>;
}

/**
 * Starts the cluster, again on fresh ports when a node does not come up: ports are picked free and released before
 * the servers bind them, so under a full test run another server can take one in between (a node whose route port
 * is taken exits, and the cluster could never place an R3 stream).
 */
export async function startNatsCluster(size = 3): Promise<NatsCluster> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startNatsClusterOnce(size);
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

async function startNatsClusterOnce(size: number): Promise<NatsCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'fl-nats-cluster-'));
  const ports = await Promise.all(Array.from({ length: size }, async () => [await freePort(), await freePort()]));
  const nodes = ports.map(([port], i) => ({ name: `n${i + 1}`, port: port!, url: `nats://127.0.0.1:${port!}` }));
  const confs: string[] = [];
  for (let i = 0; i < size; i++) {
    const [port, routePort] = ports[i]!;
    const routes = ports.filter((_, j) => j !== i).map(([, r]) => `nats-route://127.0.0.1:${r!}`);
    const conf = join(dir, `${nodes[i]!.name}.conf`);
    await writeFile(
      conf,
      [
        `server_name: ${nodes[i]!.name}`,
        `listen: "127.0.0.1:${port!}"`,
        `jetstream { store_dir: ${JSON.stringify(join(dir, nodes[i]!.name))} }`,
        `cluster { name: fl-test, listen: "127.0.0.1:${routePort!}", routes: [${routes.map((r) => JSON.stringify(r)).join(', ')}] }`,
      ].join('\n') + '\n',
    );
    confs.push(conf);
  }
  const children: (ChildProcess | undefined)[] = Array.from({ length: size }, () => undefined);
  const logs: string[] = Array.from({ length: size }, () => '');
  const index = (node: number | string): number => {
    const i = typeof node === 'number' ? node : nodes.findIndex((n) => n.name === node);
    if (i < 0 || i >= size) throw new Error(`no cluster node ${String(node)}`);
    return i;
  };
  const launch = async (i: number): Promise<void> => {
    const child = spawn(NATS_SERVER_BIN, ['-c', confs[i]!], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (b: Buffer) => (logs[i] += b.toString()));
    children[i] = child;
    // "Server is ready" comes after every listener (client and route) is bound, from this process: an open port
    // alone could belong to another test's server.
    const until = Date.now() + 30_000;
    while (!logs[i]!.includes('Server is ready') || !(await portOpen(nodes[i]!.port))) {
      if (child.exitCode !== null || child.signalCode !== null || Date.now() > until) {
        throw new Error(`cluster node ${nodes[i]!.name} did not start: ${logs[i]}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const kill = async (node: number | string): Promise<void> => {
    const i = index(node);
    const child = children[i];
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    children[i] = undefined;
  };
  try {
    await Promise.all(nodes.map((_, i) => launch(i)));
  } catch (e) {
    await Promise.all(nodes.map((_, i) => kill(i)));
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    nodes,
    servers: nodes.map((n) => n.url),
    kill,
    restart: async (node) => launch(index(node)),
    log: (node) => logs[index(node)]!,
    stop: async () => {
      await Promise.all(nodes.map((_, i) => kill(i)));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
