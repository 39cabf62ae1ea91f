/**
 * A hub and leaf nodes on loopback (Testcontainers containers of the local NATS image, or nats-server child
 * processes where Docker is missing), for tests of data owners behind their own leaf
 * nodes: the hub runs JetStream in a domain of its own and accepts leaf connections over TLS on a leafnode port;
 * each leaf node runs the committed data-owner config (deploy/leafnode/leaf.conf) with its files next to it, no
 * JetStream, and one outbound connection to the hub. Also the hub-side permissions of a leaf node's user.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientPermissions, type NatsPermissions } from '../../src/auth.js';
import { freePort, NATS_IMAGE, NATS_SERVER_BIN, privateNatsVia } from './nats-server.js';

/**
 * The hub-side permissions of a leaf node's user that serves the organization's clients `own` of job `jobId`, whose
 * other clients are `others`: the union of its clients' permissions (libs/protocol/src/auth.ts), changed in two
 * ways that leaf connections need.
 *
 * - The JetStream API in the hub domain's form. A leaf connection never carries `$JS.API.>` or `$KV.>` (nats-server
 *   denies both on every leaf connection outside a shared JetStream domain), so the leaf maps them to
 *   `$JS.<domain>.API.>` and `$JS.<domain>.API.$KV.>` (deploy/leafnode/leaf.conf) and the hub checks these forms
 *   before mapping them back.
 * - A leaf node forwards a message only where the hub has told it of interest, and the hub tells it only of
 *   subscriptions its publish permissions cover. nats-server 2.9 does not count the aggregator's
 *   `fl.<job>.round.*.update.*` as covered by `fl.<job>.round.*.update.<c>` (a wildcard in the middle of the allowed
 *   subject), so the organization's updates would never leave the leaf. Its own client subjects are therefore
 *   allowed as `fl.<job>.round.*.<kind>.*`, and every other client's denied by name: the hub drops those messages.
 *   Same for what the hub sends: no deny list there (a denied subject's interest is withheld too, as above); the
 *   allow list alone excludes other clients' updates, metrics and secagg messages.
 *
 * Publish: what the leaf may send into the hub; subscribe: what the hub sends to the leaf.
 */
/** `$JS.API.x` -> `$JS.<domain>.API.x`, `$KV.x` -> `$JS.<domain>.API.$KV.x`; other subjects unchanged. */
export function inDomain(subject: string, domain: string): string {
  if (subject.startsWith('$JS.API.')) return `$JS.${domain}.API.${subject.slice('$JS.API.'.length)}`;
  if (subject.startsWith('$KV.')) return `$JS.${domain}.API.${subject}`;
  return subject;
}

/**
 * A client's permissions on its organization's leaf node: its own permissions with the JetStream API in the hub
 * domain's form, because the leaf applies its mappings (`$JS.API.>` -> `$JS.<domain>.API.>`, deploy/leafnode/leaf.conf)
 * before it checks a publish against the user's permissions.
 */
export function leafLocalPermissions(jobId: string, clientId: string, domain: string): NatsPermissions {
  const p = clientPermissions(jobId, clientId);
  const map = (xs: readonly string[]): string[] => xs.map((x) => inDomain(x, domain));
  return { ...p, publish: { allow: map(p.publish.allow), deny: map(p.publish.deny) } };
}

export function leafPermissions(
  jobId: string,
  own: readonly string[],
  others: readonly string[],
  domain: string,
): NatsPermissions {
  const perms = own.map((c) => clientPermissions(jobId, c));
  const toDomain = (s: string): string => inDomain(s, domain);
  const root = `fl.${jobId}.round.*.`;
  const allow = new Set<string>();
  const deny = new Set<string>();
  for (const [i, p] of perms.entries()) {
    const c = own[i]!;
    for (const subject of p.publish.allow) {
      if (subject.startsWith(root) && subject.endsWith(`.${c}`)) {
        const kind = subject.slice(0, -c.length);
        allow.add(`${kind}*`);
        for (const o of others) deny.add(`${kind}${o}`);
      } else allow.add(toDomain(subject));
    }
    for (const subject of p.publish.deny) deny.add(toDomain(subject));
  }
  return {
    publish: { allow: [...allow], deny: [...deny] },
    subscribe: { allow: [...new Set(perms.flatMap((p) => p.subscribe.allow))], deny: [] },
    allowResponses: false,
  };
}

/**
 * A self-signed certificate (its own CA) for `cn`, with subjectAltName `san` where given: `tls.crt` and `tls.key` in
 * `dir`. Undefined where openssl is not installed; throws where it fails.
 */
export function selfSignedCert(dir: string, cn: string, san?: string): { cert: string; key: string } | undefined {
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  // prettier-ignore
  const r = spawnSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', `/CN=${cn}`,
      ...(san ? ['-addext', `subjectAltName=${san}`] : []),
      '-keyout', key, '-out', cert,
    ],
    { encoding: 'utf8' },
  );
  if (r.error) return undefined;
  if (r.status !== 0) throw new Error(`openssl could not make a certificate: ${r.stderr}`);
  return { cert, key };
}

/** A self-signed certificate for 127.0.0.1 (its own CA): `cert`, `key` paths in `dir`. */
export function selfSignedLoopbackCert(dir: string): { cert: string; key: string } {
  const made = selfSignedCert(dir, 'fedbiot-hub', 'IP:127.0.0.1');
  if (!made) throw new Error('openssl could not make a certificate: openssl is not installed');
  return made;
}

export interface NatsProcess {
  readonly name: string;
  /** A Testcontainers container of the local NATS image, or a nats-server child process (privateNatsVia()). */
  readonly via: 'container' | 'process';
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  log(): string;
  stop(): Promise<void>;
}

/**
 * Writes `files` (nats.conf and whatever it includes) into `dir`, checks the config with `nats-server -t` (when the
 * binary is on this host), starts the server with `env` and resolves once its log says it is ready (an open port
 * could be another test's server). It runs as a Testcontainers container of the local NATS image on the host's
 * network, with `dir` mounted at the same path, when Docker and the image are there; else as a child process
 * (FEDBIOT_TEST_NATS=container|process forces one, as for libs/protocol/test/support/nats-server.ts).
 */
export async function startNatsServer(
  name: string,
  dir: string,
  port: number,
  files: Record<string, string>,
  env: Record<string, string> = {},
): Promise<NatsProcess> {
  mkdirSync(dir, { recursive: true });
  for (const [file, text] of Object.entries(files)) writeFileSync(join(dir, file), text, { mode: 0o600 });
  const conf = join(dir, 'nats.conf');
  if (existsSync(NATS_SERVER_BIN)) {
    const check = spawnSync(NATS_SERVER_BIN, ['-t', '-c', conf], { encoding: 'utf8', env: { ...process.env, ...env } });
    if (check.status !== 0)
      throw new Error(`${name}: nats-server -t rejected its config: ${check.stdout}${check.stderr}`);
  }
  const base = { name, port, url: `nats://127.0.0.1:${port}`, dir };
  if (privateNatsVia() === 'container')
    return { ...base, via: 'container', ...(await runContainer(name, dir, conf, env)) };
  return { ...base, via: 'process', ...(await runProcess(name, conf, env)) };
}

async function runProcess(
  name: string,
  conf: string,
  env: Record<string, string>,
): Promise<{ log(): string; stop(): Promise<void> }> {
  const child: ChildProcess = spawn(NATS_SERVER_BIN, ['-c', conf], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let log = '';
  child.stderr?.on('data', (b: Buffer) => (log += b.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const stop = async (): Promise<void> => {
    if (!running()) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  for (const until = Date.now() + 30_000; !log.includes('Server is ready');) {
    if (!running() || Date.now() > until) {
      await stop();
      throw new Error(`${name} did not start:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { log: () => log, stop };
}

async function runContainer(
  name: string,
  dir: string,
  conf: string,
  env: Record<string, string>,
): Promise<{ log(): string; stop(): Promise<void> }> {
  // As in nats-server.ts: no Ryuk (its image would come from Docker Hub), no "inside a container" probe.
  process.env['TESTCONTAINERS_RYUK_DISABLED'] ??= 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] ??= 'localhost';
  const { GenericContainer, Wait } = await import('testcontainers');
  let log = '';
  const container = await new GenericContainer(NATS_IMAGE)
    .withNetworkMode('host')
    .withBindMounts([{ source: dir, target: dir, mode: 'rw' }])
    .withEnvironment(env)
    .withCommand(['-c', conf])
    .withLogConsumer((stream) => stream.on('data', (b: Buffer | string) => (log += b.toString())))
    .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
    .withStartupTimeout(30_000)
    .start()
    .catch((e: unknown) => {
      throw new Error(`${name}: NATS container (${NATS_IMAGE}) did not start: ${(e as Error).message}\n${log}`, {
        cause: e,
      });
    });
  let stopped: Promise<unknown> | undefined;
  return {
    log: () => log,
    stop: async () => {
      stopped ??= container.stop({ timeout: 2000 }).catch(() => {});
      await stopped;
    },
  };
}

/** The committed data-owner leaf config, pointed at files in `dir` and a loopback client port. */
export function leafConfig(repoRoot: string, dir: string, port: number): string {
  const text = readFileSync(join(repoRoot, 'deploy', 'leafnode', 'leaf.conf'), 'utf8');
  const out = text
    .replace(/^listen: "127\.0\.0\.1:4222"$/m, `listen: "127.0.0.1:${port}"`)
    .replaceAll('/etc/nats/', `${dir}/`);
  if (out === text || out.includes('/etc/nats/') || !out.includes(`127.0.0.1:${port}`))
    throw new Error('deploy/leafnode/leaf.conf changed shape: listen and /etc/nats/ paths are rewritten here');
  return out;
}

export { freePort };
