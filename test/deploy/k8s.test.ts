/**
 * Deployment manifests, offline: every overlay renders with `kubectl kustomize` and passes
 * scripts/validate-k8s.mjs; the rendered objects honour the services' runtime contract; a
 * deliberately broken set fails with each defect named; the rendered NATS configuration is
 * accepted by nats-server and its NKey users match the example credential Secrets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { connect, nkeyAuthenticator } from '@nats-io/transport-node';
import { jetstreamManager, RetentionPolicy } from '@nats-io/jetstream';
import { createUser } from '@nats-io/nkeys';
import { parseJobSpec, resolveJobSpec } from '../../libs/fedbiot/src/index.js';
import { taskStreamName, TRAINER_CONSUMER } from '../../libs/protocol/src/index.js';
import { repoRoot } from '../support/paths.js';
import { freePort } from '../../libs/protocol/test/support/nats-server.js';
import { selfSignedCert } from '../../libs/protocol/test/support/nats-leaf.js';

// Rendered YAML is untyped by nature; the assertions below are the type checks.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type K8s = Record<string, any>;

const VALIDATOR = join(repoRoot, 'scripts', 'validate-k8s.mjs');
const OVERLAYS = ['dev', 'prod'] as const;
const SERVICES = ['server-alignment', 'aggregator', 'client-trainer', 'evaluator'] as const;
const NATS_SERVER = '/usr/sbin/nats-server';
const hasNatsServer = existsSync(NATS_SERVER);

function overlayDir(name: string): string {
  return join(repoRoot, 'deploy', 'k8s', 'overlays', name);
}

const rendered = new Map<string, K8s[]>();

/** Renders a kustomization (once per file; callers must not mutate the objects). */
function render(dir: string): K8s[] {
  const hit = rendered.get(dir);
  if (hit) return hit;
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `kubectl kustomize ${dir}: ${r.stderr}`);
  const objects = parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as K8s | null)
    .filter((o): o is K8s => o != null);
  rendered.set(dir, objects);
  return objects;
}

function find(objects: K8s[], kind: string, name: string): K8s {
  const o = objects.find((x) => x.kind === kind && x.metadata?.name === name);
  assert.ok(o, `${kind}/${name} is not in the rendered set`);
  return o;
}

/** ConfigMaps and Secrets carry kustomize's content hash after the generator name. */
function findGenerated(objects: K8s[], kind: string, prefix: string): K8s {
  const o = objects.find((x) => x.kind === kind && new RegExp(`^${prefix}-[a-z0-9]{10}$`).test(x.metadata?.name));
  assert.ok(o, `no generated ${kind} ${prefix}-<hash>`);
  return o;
}

function validate(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [VALIDATOR, ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    input: opts.input,
    env: opts.env ?? process.env,
    maxBuffer: 64 << 20,
  });
}

interface ObjectResult {
  kind: string;
  name: string;
  schema: string[];
  policy: { rule: string; message: string }[];
  warnings: string[];
}
interface Report {
  targets: { target: string; error?: string; objects: ObjectResult[] }[];
  failed: number;
}

function container(d: K8s): K8s {
  return d.spec.template.spec.containers[0];
}

function envOf(c: K8s): Map<string, string | undefined> {
  return new Map((c.env ?? []).map((e: K8s) => [e.name, e.value]));
}

test('every overlay renders and passes schema + policy validation', () => {
  const r = validate(['--json']);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const report = JSON.parse(r.stdout) as Report;
  assert.deepEqual(
    report.targets.map((t) => t.target),
    OVERLAYS.map((o) => join('deploy', 'k8s', 'overlays', o)),
  );
  assert.equal(report.failed, 0);
  for (const t of report.targets) {
    assert.ok(t.objects.length >= 20, `${t.target}: only ${t.objects.length} objects`);
    for (const o of t.objects) {
      assert.deepEqual([o.schema, o.policy], [[], []], `${t.target} ${o.kind}/${o.name}`);
    }
    // The committed NKey seeds are public: the validator must keep saying so.
    const warned = t.objects.filter((o) => o.warnings.some((w) => w.includes('EXAMPLE credentials')));
    assert.equal(warned.length, SERVICES.length, `${t.target}: example-credential warnings`);
  }
});

test('the table output names every object and ends with the verdict', () => {
  const r = validate([overlayDir('dev')]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Deployment\/client-trainer\s+ok\s+ok/);
  assert.match(r.stdout, /StatefulSet\/nats\s+ok\s+ok/);
  assert.match(r.stdout, /20 valid, 0 invalid/);
  assert.match(r.stdout, /all valid\s*$/);
});

test('rendered YAML can be piped in on stdin', () => {
  const text = spawnSync('kubectl', ['kustomize', overlayDir('prod')], { encoding: 'utf8' }).stdout;
  const r = validate(['--json', '-'], { input: text });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const report = JSON.parse(r.stdout) as Report;
  assert.ok(report.targets[0]!.objects.some((o) => o.kind === 'ScaledObject' && o.name === 'client-trainer'));
});

test('without kubectl the validator stops with exit 2 and says what is missing', () => {
  const r = validate([overlayDir('dev')], { env: { ...process.env, PATH: '/nonexistent' } });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /kubectl not found on PATH/);
});

test('the services get the runtime contract: env, job spec, credentials, cache, probes, port', () => {
  for (const overlay of OVERLAYS) {
    const objects = render(overlayDir(overlay));
    const job = findGenerated(objects, 'ConfigMap', 'fedbiot-job');
    assert.equal(typeof job.data['job.yaml'], 'string');
    for (const name of SERVICES) {
      const d = find(objects, 'Deployment', name);
      const c = container(d);
      const pod = d.spec.template.spec;
      const where = `${overlay} ${name}`;
      assert.equal(c.args.at(-1), `dist/services/${name}/main.js`, where);
      assert.doesNotMatch(c.image, /:latest$|^[^:]*$/, where);
      const env = envOf(c);
      assert.equal(env.get('NATS_URL'), 'nats://nats:4222', where);
      assert.equal(env.get('JOB_SPEC'), '/etc/fedbiot/job.yaml', where);
      assert.deepEqual(c.ports, [{ name: 'http', containerPort: 8080 }], where);
      assert.equal(c.livenessProbe.httpGet.path, '/health/live', where);
      assert.equal(c.readinessProbe.httpGet.path, '/health/ready', where);

      const mountAt = (path: string) => {
        const m = c.volumeMounts.find((v: K8s) => v.mountPath === path);
        assert.ok(m, `${where}: nothing mounted at ${path}`);
        return pod.volumes.find((v: K8s) => v.name === m.name);
      };
      assert.equal(mountAt('/etc/fedbiot').configMap.name, job.metadata.name, where);
      // NATS_CREDS_FILE must be a key of the Secret mounted at its directory.
      const creds = env.get('NATS_CREDS_FILE')!;
      const credsDir = creds.slice(0, creds.lastIndexOf('/'));
      const secret = find(objects, 'Secret', mountAt(credsDir).secret.secretName);
      assert.ok(secret.data[creds.slice(credsDir.length + 1)], `${where}: ${creds} is not in the Secret`);
      assert.ok(secret.metadata.name.startsWith(`nats-creds-${name}-`), where);
      assert.ok(mountAt('/tmp').emptyDir, `${where}: /tmp must be an emptyDir (read-only root)`);
      const cache = mountAt('/var/cache/fedbiot');
      // Trainers keep their own cache (the fetched emulator package); only the owner's services mount the model.
      if (name === 'client-trainer') {
        assert.ok(cache.emptyDir, `${where}: the trainer cache is an emptyDir`);
        assert.ok(
          pod.volumes.every((v: K8s) => v.persistentVolumeClaim?.claimName !== 'model-cache'),
          `${where}: a trainer mounts the model volume`,
        );
      } else assert.equal(cache.persistentVolumeClaim.claimName, 'model-cache', where);
      if (name !== 'client-trainer')
        assert.equal(mountAt('/var/lib/fedbiot').persistentVolumeClaim.claimName, 'fedbiot-runs', where);
    }
    const pvc = find(objects, 'PersistentVolumeClaim', 'model-cache');
    assert.deepEqual(pvc.spec.accessModes, overlay === 'prod' ? ['ReadWriteMany'] : ['ReadWriteOnce']);
  }
});

test('the example job spec passes the project job-spec loader and fits the mounts and the protocol', () => {
  for (const overlay of OVERLAYS) {
    const objects = render(overlayDir(overlay));
    const text = findGenerated(objects, 'ConfigMap', 'fedbiot-job').data['job.yaml'] as string;
    const spec = resolveJobSpec(parseJobSpec(text, `${overlay}/job.yaml`), `${overlay}/job.yaml`);
    assert.equal(spec.job.id, 'demo');
    // The protocol's id check is stricter than the run-folder id (no "."); it throws on a bad one.
    assert.equal(taskStreamName(spec.job.id), 'FL_TASKS_demo');
    assert.ok(spec.job.outDir.startsWith('/var/lib/fedbiot/'), 'run folders on the fedbiot-runs volume');
    assert.ok(spec.model.checkpoint.startsWith('/var/cache/fedbiot/'), 'checkpoint on the model-cache volume');
    // Private evaluation: no service reads a client's test set (scripts/validate-k8s.mjs rule eval-private).
    assert.equal(spec.eval.mode, 'private');
  }
  // Control: the loader does reject what the manifests could get wrong.
  assert.throws(() => resolveJobSpec(parseJobSpec('job:\n  idd: demo\n', 'typo.yaml'), 'typo.yaml'), /idd/);
});

test('dev: one trainer, local images, no KEDA', () => {
  const objects = render(overlayDir('dev'));
  assert.ok(objects.every((o) => o.kind === 'Namespace' || o.metadata.namespace === 'fedbiot-dev'));
  assert.equal(find(objects, 'Deployment', 'client-trainer').spec.replicas, 1);
  assert.equal(container(find(objects, 'Deployment', 'aggregator')).image, 'local/fedbiot-services:dev');
  // Trainers run the image built without models/ (scripts/build-app-image.sh --trainer).
  assert.equal(container(find(objects, 'Deployment', 'client-trainer')).image, 'local/fedbiot-trainer:dev');
  assert.equal(container(find(objects, 'StatefulSet', 'nats')).image, 'local/nats:2.9.10');
  assert.equal(objects.filter((o) => o.kind === 'ScaledObject').length, 0);
});

test('prod: KEDA scales the trainers on the job work queue; PDBs; GPU trainer variant', () => {
  const objects = render(overlayDir('prod'));
  const jobSpec = parseYaml(findGenerated(objects, 'ConfigMap', 'fedbiot-job').data['job.yaml']) as K8s;

  const so = find(objects, 'ScaledObject', 'client-trainer');
  assert.equal(so.spec.scaleTargetRef.name, 'client-trainer');
  assert.equal(so.spec.minReplicaCount, 0);
  assert.equal(so.spec.maxReplicaCount, 16);
  const [trigger] = so.spec.triggers;
  assert.equal(trigger.type, 'nats-jetstream');
  assert.equal(trigger.metadata.stream, taskStreamName(jobSpec.job.id));
  assert.equal(trigger.metadata.consumer, TRAINER_CONSUMER);
  assert.equal(trigger.metadata.account, '$G');
  assert.equal(typeof trigger.metadata.lagThreshold, 'string');
  assert.equal(trigger.metadata.natsServerMonitoringEndpoint, 'nats.fedbiot.svc.cluster.local:8222');
  assert.ok(find(objects, 'Service', 'nats').spec.ports.some((p: K8s) => p.port === 8222));
  // KEDA owns the replica count.
  assert.equal('replicas' in find(objects, 'Deployment', 'client-trainer').spec, false);

  for (const name of ['aggregator', 'server-alignment', 'nats']) {
    assert.deepEqual(find(objects, 'PodDisruptionBudget', name).spec.selector.matchLabels, {
      'app.kubernetes.io/name': name,
    });
  }

  const gpu = find(objects, 'Deployment', 'client-trainer-gpu');
  const gc = container(gpu);
  assert.equal(gc.resources.limits['nvidia.com/gpu'], 1);
  assert.equal(envOf(gc).get('ORT_EXECUTION_PROVIDER'), 'webgpu');
  assert.equal(envOf(gc).get('ORT_PROVIDER_FALLBACK'), 'false');
  assert.match(envOf(gc).get('NVIDIA_DRIVER_CAPABILITIES')!, /graphics/);
  assert.equal(gpu.spec.template.spec.nodeSelector['nvidia.com/gpu.present'], 'true');
  assert.ok(gpu.spec.template.spec.tolerations.some((t: K8s) => t.key === 'nvidia.com/gpu'));
  assert.match(gc.image, /fedbiot-trainer-gpu:0\.1\.0$/);
  assert.equal(
    container(find(objects, 'Deployment', 'client-trainer')).image,
    'registry.example.com/fedbiot/fedbiot-trainer:0.1.0',
  );
  assert.equal(
    find(objects, 'ScaledObject', 'client-trainer-gpu').spec.triggers[0].metadata.consumer,
    'client-trainer',
  );
});

test('prod: NetworkPolicies let the services reach only NATS and DNS, and NATS only hear them and KEDA', () => {
  const objects = render(overlayDir('prod'));
  const policies = objects.filter((o) => o.kind === 'NetworkPolicy');
  const deny = find(objects, 'NetworkPolicy', 'default-deny');
  assert.deepEqual(deny.spec, { podSelector: {}, policyTypes: ['Ingress', 'Egress'] });

  const natsClients = objects.filter(
    (o) => o.kind === 'Deployment' && o.spec.template.metadata.labels['fedbiot.io/nats-client'] === 'true',
  );
  assert.deepEqual(
    natsClients.map((d) => d.metadata.name).toSorted(),
    [...SERVICES, 'client-trainer-gpu'].toSorted(),
    'every service pod is selected as a NATS client',
  );

  // Union of all egress rules that select the service pods: NATS 4222 and DNS 53, nothing else.
  const egress = policies
    .filter((p) => p.spec.policyTypes.includes('Egress') && p.spec.podSelector.matchLabels?.['fedbiot.io/nats-client'])
    .flatMap((p) => p.spec.egress);
  const allowed = egress
    .flatMap((rule: K8s) => rule.ports.map((port: K8s) => `${port.protocol}/${port.port}`))
    .toSorted();
  assert.deepEqual(allowed, ['TCP/4222', 'TCP/53', 'UDP/53']);
  const natsRule = egress.find((rule: K8s) => rule.ports.some((p: K8s) => p.port === 4222));
  assert.deepEqual(natsRule.to, [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'nats' } } }]);

  // The cluster's routes: NATS pods reach each other on 6222, and nothing else opens a route.
  const routes = find(objects, 'NetworkPolicy', 'nats-cluster-routes').spec;
  const natsPods = { podSelector: { matchLabels: { 'app.kubernetes.io/name': 'nats' } } };
  assert.deepEqual(routes.podSelector, natsPods.podSelector);
  assert.deepEqual(routes.ingress, [{ from: [natsPods], ports: [{ protocol: 'TCP', port: 6222 }] }]);
  assert.deepEqual(routes.egress[0], { to: [natsPods], ports: [{ protocol: 'TCP', port: 6222 }] });

  const natsIngress = find(objects, 'NetworkPolicy', 'nats-ingress').spec.ingress;
  const byPort = new Map(natsIngress.map((r: K8s) => [r.ports[0].port, r.from[0]]));
  assert.deepEqual(byPort.get(4222), { podSelector: { matchLabels: { 'fedbiot.io/nats-client': 'true' } } });
  assert.equal((byPort.get(8222) as K8s).namespaceSelector.matchLabels['kubernetes.io/metadata.name'], 'keda');
  assert.equal(natsIngress.length, 2);
});

test('base and dev stay one JetStream server: replicas 1, no cluster block, services at the default R1', () => {
  for (const dir of [join(repoRoot, 'deploy', 'k8s', 'base'), overlayDir('dev')]) {
    const objects = render(dir);
    const sts = find(objects, 'StatefulSet', 'nats');
    assert.equal(sts.spec.replicas, 1, dir);
    assert.equal(sts.spec.template.spec.affinity, undefined, dir);
    assert.doesNotMatch(
      findGenerated(objects, 'ConfigMap', 'nats-config').data['cluster.conf'],
      /^\s*(cluster|routes|server_name)\b/m,
      `${dir}: cluster.conf has settings`,
    );
    for (const name of SERVICES)
      assert.equal(envOf(container(find(objects, 'Deployment', name))).has('FEDBIOT_JS_REPLICAS'), false);
  }
});

test('prod: a 3-node JetStream cluster (routes over the headless Service, quorum PDB, anti-affinity) and R3 services', () => {
  const objects = render(overlayDir('prod'));
  const sts = find(objects, 'StatefulSet', 'nats');
  assert.equal(sts.spec.replicas, 3);
  assert.equal(sts.spec.serviceName, 'nats-headless');
  const pod = sts.spec.template.spec;
  assert.deepEqual(pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution, [
    { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: { 'app.kubernetes.io/name': 'nats' } } },
  ]);
  const nats = container(sts);
  assert.ok(nats.ports.some((p: K8s) => p.name === 'cluster' && p.containerPort === 6222));
  assert.deepEqual(
    nats.env.find((e: K8s) => e.name === 'POD_NAME'),
    { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
  );
  const headless = find(objects, 'Service', 'nats-headless');
  assert.equal(headless.spec.clusterIP, 'None');
  assert.equal(headless.spec.publishNotReadyAddresses, true, 'routes resolve before the pods are ready');
  assert.ok(headless.spec.ports.some((p: K8s) => p.port === 6222 && p.targetPort === 'cluster'));
  const conf = findGenerated(objects, 'ConfigMap', 'nats-config').data;
  assert.match(conf['nats.conf'], /^include \.\/cluster\.conf$/m);
  assert.match(conf['cluster.conf'], /^server_name: \$POD_NAME$/m);
  const routes = [...(conf['cluster.conf'] as string).matchAll(/nats:\/\/(\S+):6222/g)].map((m) => m[1]);
  assert.deepEqual(routes, ['nats-0.nats-headless', 'nats-1.nats-headless', 'nats-2.nats-headless']);
  assert.equal(find(objects, 'PodDisruptionBudget', 'nats').spec.minAvailable, 2);
  const deployments = objects.filter((o) => o.kind === 'Deployment');
  assert.deepEqual(deployments.map((d) => d.metadata.name).toSorted(), [...SERVICES, 'client-trainer-gpu'].toSorted());
  for (const d of deployments) assert.equal(envOf(container(d)).get('FEDBIOT_JS_REPLICAS'), '3', d.metadata.name);
});

test('each broken variant of the prod cluster fails with its rule named, and nothing else', () => {
  const base = join(repoRoot, 'test', 'deploy', 'fixtures', 'broken-cluster');
  const variants = [
    'even-replicas',
    'no-cluster-block',
    'missing-route',
    'fixed-server-name',
    'no-quorum',
    'no-anti-affinity',
    'r1-service',
  ];
  const r = validate(['--json', ...variants.map((v) => join(base, v))]);
  assert.equal(r.status, 1, r.stderr);
  const report = JSON.parse(r.stdout) as Report;
  const failures = new Map(
    report.targets.map((t, i) => {
      assert.equal(t.error, undefined, `${variants[i]}: ${t.error}`);
      return [
        variants[i]!,
        t.objects
          .filter((o) => o.schema.length || o.policy.length)
          .flatMap((o) => [...o.schema, ...o.policy.map((p) => `${o.kind}/${o.name} ${p.rule}: ${p.message}`)]),
      ];
    }),
  );
  const expect = (variant: string, patterns: RegExp[]) => {
    const got = failures.get(variant)!;
    assert.equal(got.length, patterns.length, `${variant}: ${JSON.stringify(got, null, 1)}`);
    patterns.forEach((p, i) => assert.match(got[i]!, p, variant));
  };
  expect('even-replicas', [
    ...['aggregator', 'client-trainer', 'client-trainer-gpu', 'evaluator', 'server-alignment'].map(
      (d) => new RegExp(`^Deployment/${d} js-replicas: .*FEDBIOT_JS_REPLICAS=3 exceeds the 2 JetStream server\\(s\\)`),
    ),
    /^StatefulSet\/nats nats-cluster: replicas 2 is even/,
  ]);
  expect('no-cluster-block', [/^StatefulSet\/nats nats-cluster: 3 replicas but nats\.conf has no cluster \{\} block/]);
  expect('missing-route', [/^StatefulSet\/nats nats-cluster: cluster\.routes do not list nats-2\.nats-headless:6222/]);
  expect('fixed-server-name', [/^StatefulSet\/nats nats-cluster: server_name is "nats": each pod needs its own/]);
  expect('no-quorum', [/^StatefulSet\/nats nats-quorum: PodDisruptionBudget nats keeps 1 of 3 NATS pods/]);
  expect('no-anti-affinity', [/^StatefulSet\/nats nats-anti-affinity: the 3 NATS pods may share a node/]);
  expect('r1-service', [
    /^Deployment\/evaluator js-replicas: container evaluator: FEDBIOT_JS_REPLICAS=1 on the 3-node cluster/,
  ]);
});

test('a broken manifest set fails, with each defect named on its object', () => {
  const r = validate(['--json', join(repoRoot, 'test', 'deploy', 'fixtures', 'broken')]);
  assert.equal(r.status, 1, r.stderr);
  const [target] = (JSON.parse(r.stdout) as Report).targets;
  const issues = new Map(
    target!.objects.map((o) => [
      `${o.kind}/${o.name}`,
      [...o.schema.map((m) => `schema: ${m}`), ...o.policy.map((p) => `${p.rule}: ${p.message}`)],
    ]),
  );
  const expect = (key: string, patterns: RegExp[]) => {
    const got = issues.get(key);
    assert.ok(got, `${key} missing from the report`);
    assert.equal(got.length, patterns.length, `${key}: ${JSON.stringify(got)}`);
    patterns.forEach((p, i) => assert.match(got[i]!, p, key));
  };
  expect('Deployment/compliant', []);
  expect('Deployment/missing-limits-probes', [
    /^resources: .*missing resources limits\.cpu, limits\.memory$/,
    /^probes: .*no livenessProbe$/,
    /^probes: .*no readinessProbe$/,
  ]);
  expect('Deployment/latest-image', [/^image: .*fedbiot-services:latest uses the floating tag 'latest'$/]);
  expect('Deployment/untagged-image', [/^image: .*registry\.example\.com:5000\/fedbiot\/fedbiot-services has no tag/]);
  expect('Deployment/root-container', [
    /^security: .*runs as root \(runAsUser: 0\)$/,
    /^security: .*runAsNonRoot is not true$/,
  ]);
  expect('Deployment/replica-typo', [/^unknown-field: spec\.replica is not a field of DeploymentSpec$/]);
  expect('ScaledObject/numeric-lag', [/^schema: \/spec\/triggers\/0\/metadata\/lagThreshold must be string$/]);
  expect('PersistentVolumeClaim/owner-model', []);
  expect('Deployment/trainer-with-model', [
    /^model-at-client: volume model: a trainer mounts PersistentVolumeClaim owner-model, which holds model weights/,
  ]);
  expect('Deployment/trainer-model-image', [
    /^model-at-client: container app: a trainer runs image fedbiot-services:0\.1\.0, which carries model weights/,
  ]);
  expect('ConfigMap/simulated-eval-job', [
    /^eval-private: job\.yaml: eval\.mode is simulation, in which the evaluator reads every client's test set/,
  ]);
  assert.equal(target!.objects.length, 11);
});

test('the NATS TLS component renders, validates and mounts the CA for every service', () => {
  const dir = join(repoRoot, 'test', 'deploy', 'fixtures', 'nats-tls');
  const r = validate([dir]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const objects = render(dir);
  for (const name of SERVICES) {
    assert.equal(
      envOf(container(find(objects, 'Deployment', name))).get('NATS_TLS_CA_FILE'),
      '/var/run/secrets/fedbiot/nats-ca/ca.crt',
    );
  }
  assert.match(findGenerated(objects, 'ConfigMap', 'nats-config').data['tls.conf'], /^tls \{$/m);
});

/** Writes the rendered nats-config ConfigMap's files into a fresh directory. */
function writeNatsConfig(objects: K8s[], edit: (conf: string) => string = (c) => c): string {
  const dir = mkdtempSync(join(tmpdir(), 'fedbiot-nats-'));
  const cm = findGenerated(objects, 'ConfigMap', 'nats-config');
  for (const [file, text] of Object.entries(cm.data as Record<string, string>)) {
    writeFileSync(join(dir, file), file === 'nats.conf' ? edit(text) : text);
  }
  return dir;
}

function natsTest(dir: string): SpawnSyncReturns<string> {
  // POD_NAME: what the prod StatefulSet sets from metadata.name (cluster.conf: server_name: $POD_NAME).
  return spawnSync(NATS_SERVER, ['-t', '-c', join(dir, 'nats.conf')], {
    encoding: 'utf8',
    env: { ...process.env, POD_NAME: 'nats-0' },
  });
}

test(
  'nats-server -t accepts the rendered NATS configuration of every overlay',
  { skip: !hasNatsServer && `${NATS_SERVER} not installed` },
  () => {
    for (const overlay of OVERLAYS) {
      const dir = writeNatsConfig(render(overlayDir(overlay)));
      try {
        const r = natsTest(dir);
        assert.equal(r.status, 0, `${overlay}: ${r.stdout}${r.stderr}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    // Control: the check does reject a misspelled key, so the pass above means something.
    const bad = writeNatsConfig(render(overlayDir('dev')), (c) => c.replace(/^max_payload:/m, 'max_paylaod:'));
    try {
      const r = natsTest(bad);
      assert.equal(r.status, 1);
      assert.match(r.stdout + r.stderr, /unknown field "max_paylaod"/);
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  },
);

test(
  'nats-server -t accepts the TLS block with a certificate in place',
  { skip: !hasNatsServer && `${NATS_SERVER} not installed` },
  () => {
    const objects = render(join(repoRoot, 'test', 'deploy', 'fixtures', 'nats-tls'));
    const dir = writeNatsConfig(objects);
    try {
      const made = selfSignedCert(dir, 'nats');
      if (!made) return; // no openssl: the render + validation test above still covers the component
      copyFileSync(made.cert, join(dir, 'ca.crt')); // self-signed: its own CA
      const tls = findGenerated(objects, 'ConfigMap', 'nats-config').data['tls.conf'].replaceAll(
        '/etc/nats-tls/',
        `${dir}/`,
      );
      writeFileSync(join(dir, 'tls.conf'), tls);
      const r = natsTest(dir);
      assert.equal(r.status, 0, r.stdout + r.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'the rendered NATS config admits exactly the example credential Secrets and serves /jsz for KEDA',
  { skip: !hasNatsServer && `${NATS_SERVER} not installed` },
  async () => {
    const objects = render(overlayDir('prod'));
    const [port, http] = [await freePort(), await freePort()];
    // One server of the prod config: its cluster.conf (routes to the 3 pods' DNS names) is dropped here and
    // exercised on its own by the cluster test below.
    const dir = writeNatsConfig(objects, (c) =>
      c
        .replace(/^include \.\/cluster\.conf$/m, '')
        .replace(/^port: 4222$/m, `port: ${port}\nhost: 127.0.0.1`)
        .replace(/^http_port: 8222$/m, `http: "127.0.0.1:${http}"`)
        .replace(/store_dir: \/data\/jetstream/, `store_dir: "${tmpdir()}/${'fedbiot-js-'}${port}"`),
    );
    const server = spawn(NATS_SERVER, ['-c', join(dir, 'nats.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    server.stderr.on('data', (b: Buffer) => (log += b.toString()));
    const servers = `127.0.0.1:${port}`;
    try {
      await new Promise<void>((ok, fail) => {
        const t = setTimeout(() => fail(new Error(`nats-server did not start:\n${log}`)), 10_000);
        server.stderr.on('data', () => log.includes('Server is ready') && (clearTimeout(t), ok()));
        server.once('exit', (code) => (clearTimeout(t), fail(new Error(`nats-server exited ${code}:\n${log}`))));
      });
      const jobId = (parseYaml(findGenerated(objects, 'ConfigMap', 'fedbiot-job').data['job.yaml']) as K8s).job.id;
      const stream = find(objects, 'ScaledObject', 'client-trainer').spec.triggers[0].metadata.stream;

      for (const name of SERVICES) {
        const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name.startsWith(`nats-creds-${name}-`))!;
        const seed = Buffer.from(secret.data['user.nk'].replace(/\s/g, ''), 'base64').toString('utf8').trim();
        const nc = await connect({
          servers,
          reconnect: false,
          authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
          // What the Deployment sets (NATS_INBOX_PREFIX): replies to the default _INBOX would be denied.
          inboxPrefix: envOf(container(find(objects, 'Deployment', name))).get('NATS_INBOX_PREFIX'),
        });
        if (name === 'aggregator') {
          // JetStream is on for the shared account: the aggregator can create the job's work queue.
          const jsm = await jetstreamManager(nc);
          await jsm.streams.add({
            name: stream,
            subjects: [`fl.${jobId}.task.*`],
            retention: RetentionPolicy.Workqueue,
          });
        }
        await nc.close();
      }

      // The permissions of auth.conf are in force: the example data owner "add" may publish its own update, not
      // another client's.
      const addSeed = readFileSync(join(repoRoot, 'deploy/k8s/base/credentials/example/client-add.nk'), 'utf8').trim();
      const add = await connect({
        servers,
        reconnect: false,
        authenticator: nkeyAuthenticator(new TextEncoder().encode(addSeed)),
        inboxPrefix: '_INBOX_client-add',
      });
      const denied: string[] = [];
      void (async () => {
        for await (const st of add.status()) if (st.type === 'error') denied.push(String(st.error));
      })();
      add.publish(`fl.${jobId}.round.0.update.add`, '{}');
      add.publish(`fl.${jobId}.round.0.update.sub`, '{}');
      await add.flush().catch(() => {});
      for (let i = 0; i < 50 && denied.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(denied.length, 1, `exactly one denial: ${JSON.stringify(denied)}`);
      assert.match(
        denied[0]!,
        new RegExp(`Permissions Violation for Publish to "fl\\.${jobId}\\.round\\.0\\.update\\.sub"`),
      );
      await add.close();

      await assert.rejects(
        connect({ servers, reconnect: false }),
        /Authorization|AUTHORIZATION/i,
        'anonymous client admitted',
      );
      const stranger = createUser().getSeed();
      await assert.rejects(
        connect({ servers, reconnect: false, authenticator: nkeyAuthenticator(stranger) }),
        /Authorization|AUTHORIZATION/i,
        'unknown NKey admitted',
      );

      // What KEDA's nats-jetstream scaler reads: account $G's streams on the monitoring port.
      const jsz = (await (await fetch(`http://127.0.0.1:${http}/jsz?acc=$G&consumers=true&config=true`)).json()) as K8s;
      const account = jsz.account_details.find((a: K8s) => a.name === '$G');
      assert.ok(
        account.stream_detail.some((s: K8s) => s.name === stream),
        JSON.stringify(jsz),
      );
    } finally {
      if (server.exitCode === null) {
        const exited = new Promise((r) => server.once('exit', r));
        server.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
      rmSync(join(tmpdir(), `fedbiot-js-${port}`), { recursive: true, force: true });
    }
  },
);

test(
  'the prod cluster config forms a JetStream cluster: three nats-servers with the rendered config (routes pointed at loopback) place an R3 stream',
  { skip: !hasNatsServer && `${NATS_SERVER} not installed` },
  async () => {
    const objects = render(overlayDir('prod'));
    const conf = findGenerated(objects, 'ConfigMap', 'nats-config').data as Record<string, string>;
    const pods = ['nats-0', 'nats-1', 'nats-2'];
    const ports = await Promise.all(pods.map(async () => ({ client: await freePort(), route: await freePort() })));
    const dir = mkdtempSync(join(tmpdir(), 'fedbiot-nats-cluster-'));
    const servers: ReturnType<typeof spawn>[] = [];
    const logs = pods.map(() => '');
    try {
      pods.forEach((pod, i) => {
        const podDir = join(dir, pod);
        // Each pod's view: the rendered files; DNS names and fixed ports become loopback ports of this host.
        let cluster = conf['cluster.conf']!.replace(/^(\s*)port: 6222$/m, `$1listen: "127.0.0.1:${ports[i]!.route}"`);
        pods.forEach((p, j) => {
          cluster = cluster.replace(`nats://${p}.nats-headless:6222`, `nats://127.0.0.1:${ports[j]!.route}`);
        });
        assert.doesNotMatch(cluster.replace(/#.*$/gm, ''), /nats-headless|6222/, 'every route was pointed at loopback');
        const main = conf['nats.conf']!.replace(/^port: 4222$/m, `listen: "127.0.0.1:${ports[i]!.client}"`)
          .replace(/^http_port: 8222$/m, '')
          .replace(/store_dir: \/data\/jetstream/, `store_dir: "${join(podDir, 'js')}"`);
        mkdirSync(podDir, { recursive: true });
        writeFileSync(join(podDir, 'nats.conf'), main);
        for (const f of ['auth.conf', 'tls.conf']) writeFileSync(join(podDir, f), conf[f]!);
        writeFileSync(join(podDir, 'cluster.conf'), cluster);
        const child = spawn(NATS_SERVER, ['-c', join(podDir, 'nats.conf')], {
          stdio: ['ignore', 'ignore', 'pipe'],
          env: { ...process.env, POD_NAME: pod },
        });
        child.stderr!.on('data', (b: Buffer) => (logs[i] += b.toString()));
        servers.push(child);
      });
      const secret = objects.find((o) => o.kind === 'Secret' && o.metadata.name.startsWith('nats-creds-aggregator-'))!;
      const seed = Buffer.from(secret.data['user.nk'].replace(/\s/g, ''), 'base64').toString('utf8').trim();
      const stream = find(objects, 'ScaledObject', 'client-trainer').spec.triggers[0].metadata.stream as string;
      const jobId = stream.replace(/^FL_TASKS_/, '');
      let info: K8s | undefined;
      let last: unknown;
      // The meta leader needs all three routes up and an election: retry the create until it is placed.
      for (const until = Date.now() + 60_000; Date.now() < until && !info;) {
        try {
          const nc = await connect({
            servers: ports.map((p) => `127.0.0.1:${p.client}`),
            reconnect: false,
            authenticator: nkeyAuthenticator(new TextEncoder().encode(seed)),
            inboxPrefix: '_INBOX_service-aggregator',
          });
          try {
            const jsm = await jetstreamManager(nc, { timeout: 5000 });
            info = (await jsm.streams.add({
              name: stream,
              subjects: [`fl.${jobId}.task.*`],
              retention: RetentionPolicy.Workqueue,
              num_replicas: 3,
            })) as K8s;
          } finally {
            await nc.close();
          }
        } catch (e) {
          last = e;
          await new Promise((r) => setTimeout(r, 500));
        }
      }
      assert.ok(info, `no R3 stream within 60 s: ${String(last)}\n${logs.join('\n----\n').slice(-4000)}`);
      assert.equal(info.config.num_replicas, 3);
      // Leader and two current replicas: the stream lives on all three servers, named after their pods.
      const peers = [info.cluster.leader, ...info.cluster.replicas.map((r: K8s) => r.name)].toSorted();
      assert.deepEqual(peers, pods);
      assert.equal(info.cluster.name, 'fedbiot');
    } finally {
      for (const child of servers) {
        if (child.exitCode === null) {
          const exited = new Promise((r) => child.once('exit', r));
          child.kill('SIGTERM');
          await exited;
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
