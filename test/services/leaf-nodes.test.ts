/**
 * Data owners behind leaf nodes: the model owner's hub (JetStream in domain "hub", a TLS leafnode port) and two
 * organizations' leaf nodes running the committed data-owner config (deploy/leafnode/leaf.conf: no JetStream, one
 * outbound TLS connection to the hub with the organization's own credentials). Organization A holds client `add`,
 * organization B clients `sub` and `mul`; each trainer connects only to its organization's leaf node, under its
 * own identity, which the hub does not even admit. The services run on the hub. The job must end with the
 * standalone job's final metrics, and the leaf connections must carry only the organization's own subjects.
 *
 * The three servers are Testcontainers containers of the local NATS image (scripts/build-nats-image.sh) on the host's
 * network, or nats-server child processes where Docker is missing (libs/protocol/test/support/nats-leaf.ts,
 * FEDBIOT_TEST_NATS=container|process forces one); the configs are the committed files with paths and ports
 * rewritten.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { resolveJobSpec, type JobSpec } from '../../libs/fedbiot/src/index.js';
import { generateJobAuth, renderAuthorization, type NatsIdentity } from '../../libs/protocol/src/index.js';
import type { RunningService } from '../../services/common/http.js';
import type { LogRecord } from '../../services/common/logger.js';
import type { ServiceRole } from '../../services/common/role.js';
import type { ClientTrainer } from '../../services/client-trainer/trainer.js';
import { startTrainer } from '../../services/client-trainer/trainer.module.js';
import {
  assertSameFinal,
  finalEvals,
  servicesRawSpec,
  servicesSpec,
  standaloneFinal,
  startServerAround,
  trainerSpec,
} from '../support/services-job.js';
import { repoRoot } from '../support/paths.js';
import { tmpWithDemoFederation } from '../support/federation.js';
import { hasNatsServer } from '../../libs/protocol/test/support/nats-server.js';
import {
  freePort,
  leafConfig,
  leafLocalPermissions,
  leafPermissions,
  selfSignedLoopbackCert,
  startNatsServer,
  type NatsProcess,
} from '../../libs/protocol/test/support/nats-leaf.js';

const DOMAIN = 'hub';
const ORGS = { 'org-a': ['add'], 'org-b': ['sub', 'mul'] } as const;
type Org = keyof typeof ORGS;

let tmp = '';

before(async () => {
  tmp = await tmpWithDemoFederation('fedbiot-leaf-');
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The environment of a process running as identity `i` (its Secret and env in a cluster). */
const envOf = (i: NatsIdentity): NodeJS.ProcessEnv => ({
  NATS_USER: i.user,
  NATS_PASSWORD: i.password!,
  NATS_INBOX_PREFIX: i.inboxPrefix,
});

async function monitor<T>(port: number, path: string): Promise<T> {
  return (await (await fetch(`http://127.0.0.1:${port}${path}`)).json()) as T;
}

test(
  'data owners behind their own leaf nodes (TLS, outbound only, own credentials, own subjects only) complete the job; it equals standalone',
  { skip: !hasNatsServer && 'neither nats-server nor Docker with the local NATS image' },
  async () => {
    const jobId = `leaf-${process.pid}-${Date.now().toString(36)}`;
    const s = servicesSpec(tmp, jobId, 'leaf test job');
    const clients = Object.values(ORGS).flat();

    // The standalone reference (same spec and seed; the job id enters no seed).
    const { rows: reference } = await standaloneFinal(
      servicesSpec(tmp, `leaf-standalone-${process.pid}`, 'standalone'),
    );

    // Identities: services on the hub; clients on their organization's leaf only; one hub user per leaf node.
    const auth = generateJobAuth({ jobId, clients, credentials: 'password' });
    const identity = (name: string): NatsIdentity => {
      const id = auth.identities.find((i) => i.name === name);
      assert.ok(id, name);
      return id;
    };
    const leafUsers = new Map<Org, NatsIdentity>(
      (Object.entries(ORGS) as [Org, readonly string[]][]).map(([org, ids]) => [
        org,
        {
          name: `leaf-${org}`,
          kind: 'client',
          subject: org,
          user: `leaf-${org}`,
          password: `pw-${org}-${Math.random().toString(36).slice(2)}`,
          inboxPrefix: '',
          permissions: leafPermissions(
            jobId,
            ids,
            clients.filter((c) => !ids.includes(c)),
            DOMAIN,
          ),
        },
      ]),
    );

    const hubDir = join(tmp, 'hub');
    mkdirSync(hubDir, { recursive: true });
    const tls = selfSignedLoopbackCert(hubDir);
    const [hubPort, hubHttp, leafPort] = [await freePort(), await freePort(), await freePort()];
    const servers: NatsProcess[] = [];
    const conns: NatsConnection[] = [];
    const services: RunningService<ServiceRole>[] = [];
    const logs: LogRecord[] = [];
    const sink = (r: LogRecord): void => void logs.push(r);
    let passed = false;
    try {
      // The hub: the committed leafnode block (deploy/leafnode/hub-leafnodes.conf) on a loopback port with the test
      // certificate, JetStream in domain "hub", users = the services and one per leaf node. No client identity.
      const hubLeafnodes = readFileSync(join(repoRoot, 'deploy', 'leafnode', 'hub-leafnodes.conf'), 'utf8')
        .replace(/^ {2}port: 7422$/m, `  listen: "127.0.0.1:${leafPort}"`)
        .replace('/etc/nats-tls/tls.crt', tls.cert)
        .replace('/etc/nats-tls/tls.key', tls.key);
      assert.match(hubLeafnodes, new RegExp(`listen: "127.0.0.1:${leafPort}"`));
      const hub = await startNatsServer('hub', hubDir, hubPort, {
        'nats.conf': [
          `server_name: hub`,
          `listen: "127.0.0.1:${hubPort}"`,
          `http: "127.0.0.1:${hubHttp}"`,
          `jetstream { store_dir: ${JSON.stringify(join(hubDir, 'js'))}, domain: ${DOMAIN} }`,
          hubLeafnodes,
          renderAuthorization([...auth.identities.filter((i) => i.kind === 'service'), ...leafUsers.values()]),
        ].join('\n'),
      });
      servers.push(hub);

      // Each organization's leaf node: the committed leaf.conf, its own users (its trainers' identities, and on
      // org-a an unrestricted local admin to probe what the hub lets across), the hub's CA, its hub credentials.
      const leafUrl = new Map<Org, string>();
      for (const [org, ids] of Object.entries(ORGS) as [Org, readonly string[]][]) {
        const dir = join(tmp, org);
        mkdirSync(dir, { recursive: true });
        copyFileSync(tls.cert, join(dir, 'hub-ca.pem'));
        const port = await freePort();
        // The trainers' own identities, with the JetStream API in the hub domain's form (the leaf maps before it checks).
        const local = ids.map((c) => ({
          ...identity(`client-${c}`),
          permissions: leafLocalPermissions(jobId, c, DOMAIN),
        }));
        const adminUsers = org === 'org-a' ? `\n    { user: "org-admin", password: "local-admin-pw" }` : '';
        const users = renderAuthorization(local).replace(/\n {2}\]\n\}\n$/, `${adminUsers}\n  ]\n}\n`);
        const leaf = leafUsers.get(org)!;
        const leafNode = await startNatsServer(
          org,
          dir,
          port,
          {
            'nats.conf': leafConfig(repoRoot, dir, port),
            'local-users.conf': users,
            'hub-credentials.conf': `HUB_URL: "tls://${leaf.user}:${leaf.password}@127.0.0.1:${leafPort}"\n`,
          },
          { LEAF_NAME: org },
        );
        servers.push(leafNode);
        leafUrl.set(org, leafNode.url);
      }
      // Both leaf nodes connected to the hub (they dialled out: the leaf configs listen for no leaf node).
      for (const org of ['org-a', 'org-b']) {
        const conf = readFileSync(join(tmp, org, 'nats.conf'), 'utf8').replace(/#.*$/gm, '');
        assert.doesNotMatch(conf, /leafnodes\s*\{[^}]*\b(port|listen)\s*:/, `${org} accepts no leaf connection`);
        assert.doesNotMatch(conf, /^\s*jetstream\b/m, `${org} runs no JetStream`);
      }
      type Leafz = { leafs: { account: string; ip: string }[] };
      for (const until = Date.now() + 20_000; ;) {
        const leafz = await monitor<Leafz>(hubHttp, '/leafz');
        if (leafz.leafs.length === 2) {
          assert.deepEqual(
            leafz.leafs.map((l) => [l.account, l.ip]),
            [
              ['$G', '127.0.0.1'],
              ['$G', '127.0.0.1'],
            ],
          );
          break;
        }
        assert.ok(Date.now() < until, `leaf nodes did not connect: ${JSON.stringify(leafz)}\n${hub.log()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      // The hub's leafnode port takes TLS only (so both connections above are TLS).
      const varz = await monitor<{ leaf: Record<string, unknown> }>(hubHttp, '/varz');
      assert.equal(varz.leaf['tls_required'], true, JSON.stringify(varz.leaf));

      // A data owner's identity is not a hub user: its trainer can reach the hub only through its leaf node.
      const add = identity('client-add');
      await assert.rejects(
        connect({ servers: hub.url, user: add.user, pass: add.password!, reconnect: false }),
        /Authorization/i,
      );

      // What crosses org-a's leaf connection. On the hub, an observer with the aggregator's rights; on org-a's leaf,
      // its unrestricted local admin, which publishes a forged update of another organization's client and one of
      // its own, and listens for every client's updates and metrics and for the plans (the control: plans may cross).
      const agg = identity('service-aggregator');
      const observer = await connect({
        servers: hub.url,
        user: agg.user,
        pass: agg.password!,
        inboxPrefix: agg.inboxPrefix,
      });
      conns.push(observer);
      const atHub: { subject: string; data: string }[] = [];
      const sub = observer.subscribe(`fl.${jobId}.round.*.update.*`, {
        callback: (_e, m) => void atHub.push({ subject: m.subject, data: m.string() }),
      });
      await observer.flush();
      const admin = await connect({ servers: leafUrl.get('org-a')!, user: 'org-admin', pass: 'local-admin-pw' });
      conns.push(admin);
      const atLeaf: string[] = [];
      for (const subject of [
        `fl.${jobId}.round.*.update.*`,
        `fl.${jobId}.round.*.metrics.*`,
        `fl.${jobId}.round.*.plan`,
        `fl.${jobId}.>`,
      ])
        admin.subscribe(subject, { callback: (_e, m) => void atLeaf.push(m.subject) });
      await admin.flush();
      await new Promise((r) => setTimeout(r, 300)); // interest propagates over the leaf connection
      admin.publish(`fl.${jobId}.round.99.update.sub`, 'forged by org-a');
      admin.publish(`fl.${jobId}.round.99.update.add`, 'org-a on its own subject');
      await admin.flush();
      for (let i = 0; i < 50 && atHub.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(
        atHub.map((m) => m.data),
        ['org-a on its own subject'],
        'only the organization’s own update subject crosses into the hub',
      );
      sub.unsubscribe();

      // The job: services on the hub, each trainer on its organization's leaf node under its own identity.
      const manifest = JSON.parse(readFileSync(join(tmp, 'federation', 'manifest.json'), 'utf8')) as {
        clients: { id: string; train: { path: string }; test: { path: string } }[];
      };
      const ownerSpec = (clientId: string): JobSpec => {
        const dir = join(tmp, `owner-${clientId}`);
        const mine = manifest.clients.find((c) => c.id === clientId)!;
        for (const rel of ['manifest.json', mine.train.path, mine.test.path]) {
          mkdirSync(dirname(join(dir, rel)), { recursive: true });
          copyFileSync(join(tmp, 'federation', rel), join(dir, rel));
        }
        return trainerSpec(resolveJobSpec(servicesRawSpec(tmp, jobId, {}, dir), `${clientId}'s job spec`), tmp);
      };
      const trainersStarted = Promise.all(
        (Object.entries(ORGS) as [Org, readonly string[]][]).flatMap(([org, ids]) =>
          ids.map((clientId) =>
            startTrainer(
              {
                natsUrl: leafUrl.get(org)!,
                natsEnv: envOf(identity(`client-${clientId}`)),
                spec: ownerSpec(clientId),
                clientId,
                logSink: sink,
                cacheRoot: join(tmp, `owner-${clientId}`, 'cache'),
              },
              0,
            ),
          ),
        ),
      );
      const as = (role: string) => ({
        natsUrl: hub.url,
        natsEnv: envOf(identity(`service-${role}`)),
        spec: s,
        logSink: sink,
      });
      const t0 = performance.now();
      const { aggregator, trainers } = await startServerAround(trainersStarted, as, 90_000, services);
      const final = await aggregator.role.done;
      const jobMs = performance.now() - t0;
      assert.equal(final?.round, 2);
      const order = Object.values(ORGS).flat();
      for (const [i, clientId] of order.entries())
        assert.deepEqual((trainers[i]!.role as ClientTrainer).completed, [`0/${clientId}`, `1/${clientId}`]);

      // The final metrics equal the standalone job's.
      const maxDiff = assertSameFinal(finalEvals(aggregator.role, s.job.rounds), reference);

      // No trainer was ever a client of the hub: its client connections are the services' and the observer's.
      type Connz = { connections: { authorized_user?: string }[] };
      const users = (await monitor<Connz>(hubHttp, '/connz?auth=true')).connections.map((c) => c.authorized_user);
      assert.ok(users.length >= 3, JSON.stringify(users));
      for (const u of users) assert.match(String(u), /^service-/, `hub client ${u}`);

      // Over the whole job, org-a's leaf got the plans but no update or metrics of org-b's clients: its probe sees its
      // own leaf's local traffic (its own trainer's updates, its own test messages of round 99), nothing of others.
      assert.ok(
        atLeaf.some((x) => x.endsWith('.plan')),
        'the plans crossed to org-a (the probe was listening)',
      );
      const ownOrOrgA = (x: string): boolean =>
        /\.round\.99\./.test(x) || (ORGS['org-a'] as readonly string[]).includes(x.split('.').at(-1)!);
      const updates = atLeaf.filter((x) => /\.(update|metrics)\./.test(x));
      assert.ok(
        updates.some((x) => x.endsWith('.round.0.update.add')),
        `the probe saw org-a's own trainer: ${JSON.stringify(updates)}`,
      );
      assert.deepEqual(
        updates.filter((x) => !ownOrOrgA(x)),
        [],
        "no update or metrics of org-b's clients crossed into org-a",
      );

      const errors = logs.filter((r) => r.level === 'error');
      assert.deepEqual(errors, [], 'no service logged an error');
      passed = true;
      console.log(
        `leaf nodes: ${servers[0]!.via === 'container' ? 'containers of the local NATS image' : 'nats-server processes'} (hub + org-a + org-b, TLS leaf connections); job ${(jobMs / 1000).toFixed(1)} s; max |test loss difference| ${maxDiff.toExponential(2)}; ${atLeaf.length} messages reached org-a's probe, ${updates.length} of them org-a's own updates, none of org-b's`,
      );
    } finally {
      if (!passed) {
        for (const r of logs) if (r.level !== 'debug') console.log(JSON.stringify(r));
        for (const srv of servers) console.log(`---- ${srv.name}\n${srv.log().slice(-3000)}`);
      }
      for (const svc of services.toReversed()) await svc.close().catch(() => {});
      for (const c of conns) await c.close().catch(() => {});
      for (const srv of servers.toReversed()) await srv.stop();
    }
  },
);
