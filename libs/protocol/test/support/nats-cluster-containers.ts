/**
 * A 3-node (or n-node) JetStream cluster of Testcontainers containers of the local NATS image
 * (scripts/build-nats-image.sh) on a user-defined Docker network: the nodes reach each other by network alias
 * (`nats-route://n2:6222`, as the StatefulSet's pods do by DNS name), and each publishes its client port on a fixed
 * loopback port of the host and advertises that port to clients (`client_advertise`), so a client given one node's
 * URL learns the others' from the cluster and fails over to them. Each node's config and JetStream store are a
 * bind-mounted host folder, its volume: `kill(i)` SIGKILLs the container (a crash), `restart(i)` starts the same
 * container again on the same store, as a pod rescheduled with its volume.
 *
 * `startTestCluster()` picks containers or nats-server processes (./nats-cluster.ts) the way private servers do
 * (./nats-server.ts: Docker with the image, else the binary; FEDBIOT_TEST_NATS=container|process forces one).
 */
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsCluster, type NatsCluster } from './nats-cluster.js';
import { freePort, NATS_IMAGE, portOpen, privateNatsVia } from './nats-server.js';

export interface TestCluster extends NatsCluster {
  /** How its nodes run. */
  readonly via: 'container' | 'process';
}

/** Containers of NATS_IMAGE where Docker has the image, else nats-server child processes. */
export async function startTestCluster(size = 3): Promise<TestCluster> {
  if (privateNatsVia() === 'container') return startNatsClusterContainers(size);
  return { via: 'process', ...(await startNatsCluster(size)) };
}

const docker = (...args: string[]): { status: number | null; out: string } => {
  const r = spawnSync('docker', args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
};

export async function startNatsClusterContainers(size = 3): Promise<TestCluster> {
  // Before the first import of testcontainers, which reads them (see nats-server.ts).
  process.env['TESTCONTAINERS_RYUK_DISABLED'] ??= 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] ??= 'localhost';
  const { GenericContainer, Network, Wait } = await import('testcontainers');
  const dir = await mkdtemp(join(tmpdir(), 'fl-nats-cluster-c-'));
  await chmod(dir, 0o755);
  const ports: number[] = [];
  for (let i = 0; i < size; i++) ports.push(await freePort());
  const nodes = ports.map((port, i) => ({ name: `n${i + 1}`, port, url: `nats://127.0.0.1:${port}` }));
  const network = await new Network().start();
  const ids: string[] = [];
  const stopAll = async (): Promise<void> => {
    for (const id of ids) docker('rm', '-f', '-v', id);
    await network.stop().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  };
  const index = (node: number | string): number => {
    const i = typeof node === 'number' ? node : nodes.findIndex((n) => n.name === node);
    if (i < 0 || i >= size) throw new Error(`no cluster node ${String(node)}`);
    return i;
  };
  const log = (node: number | string): string => docker('logs', ids[index(node)]!).out;
  const ready = async (i: number, times: number): Promise<void> => {
    // "Server is ready" once per start of this container (its log survives a restart); then the published port.
    const until = Date.now() + 60_000;
    for (;;) {
      const text = log(i);
      if ((text.match(/Server is ready/g) ?? []).length >= times && (await portOpen(nodes[i]!.port))) return;
      if (Date.now() > until) throw new Error(`cluster node ${nodes[i]!.name} did not come up: ${text.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  try {
    const started = await Promise.all(
      nodes.map(async (n, i) => {
        const nodeDir = join(dir, n.name);
        await mkdir(nodeDir);
        const routes = nodes.filter((_, j) => j !== i).map((m) => `"nats-route://${m.name}:6222"`);
        const conf = join(nodeDir, 'nats.conf');
        await writeFile(
          conf,
          [
            `server_name: ${n.name}`,
            `listen: "0.0.0.0:4222"`,
            `client_advertise: "127.0.0.1:${n.port}"`,
            `jetstream { store_dir: ${JSON.stringify(join(nodeDir, 'js'))} }`,
            `cluster { name: fl-test, listen: "0.0.0.0:6222", routes: [${routes.join(', ')}] }`,
          ].join('\n') + '\n',
        );
        return (
          new GenericContainer(NATS_IMAGE)
            .withNetwork(network)
            .withNetworkAliases(n.name)
            .withName(`fl-nats-${n.name}-${process.pid}-${Date.now().toString(36)}`)
            .withExposedPorts({ container: 4222, host: n.port })
            // As this process's user, so that the store it writes on the host can be removed here.
            .withUser(`${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`)
            .withBindMounts([{ source: nodeDir, target: nodeDir, mode: 'rw' }])
            .withCommand(['-c', conf])
            .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
            .withStartupTimeout(60_000)
            .start()
        );
      }),
    );
    for (const c of started) ids.push(c.getId());
    for (let i = 0; i < size; i++) await ready(i, 1);
  } catch (e) {
    await stopAll();
    throw e;
  }
  const starts = nodes.map(() => 1);
  return {
    via: 'container',
    nodes,
    servers: nodes.map((n) => n.url),
    kill: async (node) => {
      const i = index(node);
      const r = docker('kill', '--signal', 'KILL', ids[i]!);
      if (r.status !== 0 && !/is not running/.test(r.out)) throw new Error(`docker kill ${nodes[i]!.name}: ${r.out}`);
      docker('wait', ids[i]!);
    },
    restart: async (node) => {
      const i = index(node);
      const r = docker('start', ids[i]!);
      if (r.status !== 0) throw new Error(`docker start ${nodes[i]!.name}: ${r.out}`);
      await ready(i, ++starts[i]!);
    },
    log,
    stop: stopAll,
  };
}
