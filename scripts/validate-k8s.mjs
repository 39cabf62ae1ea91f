#!/usr/bin/env node
// Offline validation of the Kubernetes manifests: renders kustomizations with `kubectl kustomize`,
// checks every object against the Kubernetes / KEDA schemas (kubernetes-models, no API server
// needed) and applies the project's policy checks that schemas cannot express.
//
// Usage:
//   node scripts/validate-k8s.mjs                     every overlay under deploy/k8s/overlays/
//   node scripts/validate-k8s.mjs DIR...              these kustomization directories
//   kubectl kustomize DIR | node scripts/validate-k8s.mjs -     rendered YAML from stdin
//   --json   print one JSON report instead of the table
// Exit status: 0 all valid, 1 any object failed, 2 usage error or a tool (kubectl) missing.
//
// Policy checks (beyond the schema):
//   resources      every container has cpu+memory requests and limits
//   probes         every container has liveness and readiness probes; the services' HTTP probes use
//                  /health/live and /health/ready (NATS may use its own endpoints)
//   security       runAsNonRoot, no uid 0, readOnlyRootFilesystem, allowPrivilegeEscalation=false,
//                  capabilities drop ALL, seccomp RuntimeDefault (pod or container level)
//   image          every image has an explicit tag (or digest) and the tag is not `latest`
//   unknown-field  Deployment/StatefulSet spec, pod spec and container keys not in the Kubernetes
//                  API (e.g. `replica: 3`); the allow-lists are read from kubernetes-models' types
//   reference      ScaledObject targets, Service/PDB selectors, ConfigMap/PVC volumes resolve
//                  within the rendered set (Secrets may be provided out of band and are not checked)
//   keda           nats-jetstream triggers name endpoint, stream and consumer; the stream is
//                  FL_TASKS_<job.id> of the job spec ConfigMap when one is rendered
//   model-at-client  a data owner's trainer pod (label app.kubernetes.io/component: training) mounts
//                  no volume that holds model weights: no PersistentVolumeClaim labelled
//                  fedbiot.io/model-weights=true, no hostPath; trainers receive the emulator package
//                  over NATS and keep it in their own cache (an emptyDir); and none of its containers
//                  runs a model-carrying image (repository fedbiot-services or fedbiot-services-gpu, which
//                  may hold demo weights under /app/models): trainers run fedbiot-trainer(-gpu)
//   eval-private   a job spec ConfigMap (key job.yaml) does not set eval.mode: simulation, in which the
//                  evaluator reads every client's test set; deployments evaluate privately (AdapFu on the
//                  owner's eval.ownerValidation, AdapEmu by each client's trainer, numbers only)
// Warnings (never fail): Secrets annotated fedbiot.io/example-credentials=true.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, parseAllDocuments } from 'yaml';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

class ToolError extends Error {}

// ---------------------------------------------------------------------------------------------
// Rendering

/** Renders a kustomization directory; throws ToolError when kubectl is missing. */
function render(dir) {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error && r.error.code === 'ENOENT') {
    throw new ToolError(
      'kubectl not found on PATH: it is needed to render the kustomizations (`kubectl kustomize`, ' +
        'kubectl >= 1.27 bundles kustomize v5). Install kubectl, or pipe rendered YAML into `validate-k8s.mjs -`.',
    );
  }
  if (r.error) throw r.error;
  if (r.status !== 0) {
    return { error: `kubectl kustomize ${dir} failed: ${r.stderr.trim() || `exit ${r.status}`}` };
  }
  return { text: r.stdout };
}

function parseObjects(text, source) {
  const objects = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${source}: YAML error: ${doc.errors[0].message}`);
    const o = doc.toJS();
    if (o == null) continue;
    objects.push(o);
  }
  return objects;
}

// ---------------------------------------------------------------------------------------------
// Schema validation (kubernetes-models, @kubernetes-models/keda)

const modelCache = new Map();

async function modelFor(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (modelCache.has(key)) return modelCache.get(key);
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const mod =
    group === 'keda.sh'
      ? `@kubernetes-models/keda/keda.sh/${version}`
      : `kubernetes-models/${group ? `${group}/` : ''}${version}`;
  let model;
  try {
    model = (await import(mod))[kind];
  } catch {
    model = undefined;
  }
  modelCache.set(key, model);
  return model;
}

/**
 * kustomize wraps long base64 Secret values over several lines of a literal block; the API
 * server's base64 decoder skips line breaks, the schema's "byte" format does not.
 */
function normalizeForSchema(o) {
  if (o.kind !== 'Secret' || o.data == null || typeof o.data !== 'object') return o;
  const data = Object.fromEntries(
    Object.entries(o.data).map(([k, v]) => [k, typeof v === 'string' ? v.replace(/[\r\n]/g, '') : v]),
  );
  return { ...o, data };
}

async function schemaErrors(o) {
  if (typeof o.apiVersion !== 'string' || typeof o.kind !== 'string') {
    return ['object has no apiVersion/kind'];
  }
  const Model = await modelFor(o.apiVersion, o.kind);
  if (!Model) return [`no schema for ${o.apiVersion} ${o.kind} (unknown kind or API version)`];
  try {
    new Model(normalizeForSchema(o)).validate();
    return [];
  } catch (e) {
    if (Array.isArray(e.errors)) {
      return e.errors.map((x) => `${x.instancePath || '/'} ${x.message}`.trim());
    }
    return [String(e.message ?? e)];
  }
}

// ---------------------------------------------------------------------------------------------
// Allow-lists of field names, read from kubernetes-models' type declarations so they follow the
// installed API version instead of a hand-copied list.

const fieldCache = new Map();

function allowedFields(typeModule) {
  if (fieldCache.has(typeModule)) return fieldCache.get(typeModule);
  const dts = require.resolve(typeModule).replace(/\.js$/, '.d.ts');
  const text = readFileSync(dts, 'utf8');
  const start = text.indexOf('export interface ');
  const end = text.indexOf('\n}', start);
  if (start < 0 || end < 0) throw new Error(`cannot read field names from ${dts}`);
  const fields = new Set([...text.slice(start, end).matchAll(/^ {4}"([^"]+)"\??:/gm)].map((m) => m[1]));
  if (fields.size === 0) throw new Error(`no field names found in ${dts}`);
  fieldCache.set(typeModule, fields);
  return fields;
}

function unknownKeys(value, typeModule, path) {
  if (value == null || typeof value !== 'object' || Array.isArray(value)) return [];
  const allowed = allowedFields(typeModule);
  return Object.keys(value)
    .filter((k) => !allowed.has(k))
    .map((k) => ({ rule: 'unknown-field', message: `${path}.${k} is not a field of ${typeModule.split('/').pop()}` }));
}

// ---------------------------------------------------------------------------------------------
// Policy checks

const WORKLOAD_SPEC_TYPES = {
  Deployment: 'kubernetes-models/apps/v1/DeploymentSpec',
  StatefulSet: 'kubernetes-models/apps/v1/StatefulSetSpec',
  DaemonSet: 'kubernetes-models/apps/v1/DaemonSetSpec',
};

/** The pod template spec of a workload object, or undefined. */
function podSpecOf(o) {
  switch (o.kind) {
    case 'Deployment':
    case 'StatefulSet':
    case 'DaemonSet':
    case 'ReplicaSet':
    case 'Job':
      return { spec: o.spec?.template?.spec, path: 'spec.template.spec', labels: o.spec?.template?.metadata?.labels };
    case 'CronJob':
      return {
        spec: o.spec?.jobTemplate?.spec?.template?.spec,
        path: 'spec.jobTemplate.spec.template.spec',
        labels: o.spec?.jobTemplate?.spec?.template?.metadata?.labels,
      };
    case 'Pod':
      return { spec: o.spec, path: 'spec', labels: o.metadata?.labels };
    default:
      return undefined;
  }
}

/** The broker may answer its own health endpoints; every other container is one of our services. */
function isNats(o) {
  return o.metadata?.name === 'nats' || o.metadata?.labels?.['app.kubernetes.io/name'] === 'nats';
}

/** Splits an image reference into name, tag and digest (registry ports are not tags). */
export function parseImage(ref) {
  const [nameTag, digest] = ref.split('@');
  const slash = nameTag.lastIndexOf('/');
  const colon = nameTag.lastIndexOf(':');
  return colon > slash
    ? { name: nameTag.slice(0, colon), tag: nameTag.slice(colon + 1), digest }
    : { name: nameTag, tag: undefined, digest };
}

// Repositories (last path component) whose images may carry model weights: the services image ships the demo
// models (scripts/build-app-image.sh). Trainers run fedbiot-trainer, built without models/.
const MODEL_IMAGES = new Set(['fedbiot-services', 'fedbiot-services-gpu']);

/** The model-at-client issue of a trainer container whose image may hold model weights, or none. */
function checkTrainerImage(c, where) {
  if (typeof c.image !== 'string') return [];
  const { name } = parseImage(c.image);
  const repo = name.slice(name.lastIndexOf('/') + 1);
  if (!MODEL_IMAGES.has(repo)) return [];
  return [
    {
      rule: 'model-at-client',
      message: `${where}: a trainer runs image ${c.image}, which carries model weights; trainers run fedbiot-trainer (scripts/build-app-image.sh --trainer)`,
    },
  ];
}

function checkImage(c, where) {
  if (typeof c.image !== 'string' || c.image === '') return [{ rule: 'image', message: `${where}: no image` }];
  const { tag, digest } = parseImage(c.image);
  if (tag === 'latest')
    return [{ rule: 'image', message: `${where}: image ${c.image} uses the floating tag 'latest'` }];
  if (!tag && !digest) return [{ rule: 'image', message: `${where}: image ${c.image} has no tag (pin one)` }];
  return [];
}

function checkResources(c, where) {
  const missing = [];
  for (const kind of ['requests', 'limits']) {
    for (const res of ['cpu', 'memory']) {
      if (c.resources?.[kind]?.[res] == null) missing.push(`${kind}.${res}`);
    }
  }
  return missing.length ? [{ rule: 'resources', message: `${where}: missing resources ${missing.join(', ')}` }] : [];
}

function checkProbes(c, where, nats) {
  const issues = [];
  const expected = { livenessProbe: '/health/live', readinessProbe: '/health/ready' };
  for (const [probe, path] of Object.entries(expected)) {
    const p = c[probe];
    if (!p) {
      issues.push({ rule: 'probes', message: `${where}: no ${probe}` });
    } else if (!nats && p.httpGet?.path !== path) {
      const got = p.httpGet ? `httpGet ${p.httpGet.path}` : Object.keys(p).find((k) => k !== 'periodSeconds');
      issues.push({ rule: 'probes', message: `${where}: ${probe} must be httpGet ${path} (has ${got})` });
    }
  }
  return issues;
}

function checkSecurity(pod, c, where) {
  const issues = [];
  const psc = pod.securityContext ?? {};
  const csc = c.securityContext ?? {};
  const eff = (k) => (csc[k] !== undefined ? csc[k] : psc[k]);
  if (eff('runAsUser') === 0) issues.push({ rule: 'security', message: `${where}: runs as root (runAsUser: 0)` });
  if (eff('runAsNonRoot') !== true) issues.push({ rule: 'security', message: `${where}: runAsNonRoot is not true` });
  if (csc.readOnlyRootFilesystem !== true) {
    issues.push({ rule: 'security', message: `${where}: readOnlyRootFilesystem is not true` });
  }
  if (csc.allowPrivilegeEscalation !== false) {
    issues.push({ rule: 'security', message: `${where}: allowPrivilegeEscalation is not false` });
  }
  if (csc.privileged === true) issues.push({ rule: 'security', message: `${where}: privileged container` });
  if (!(csc.capabilities?.drop ?? []).includes('ALL')) {
    issues.push({ rule: 'security', message: `${where}: capabilities do not drop ALL` });
  }
  if ((csc.capabilities?.add ?? []).length > 0) {
    issues.push({ rule: 'security', message: `${where}: adds capabilities ${csc.capabilities.add.join(', ')}` });
  }
  const seccomp = (csc.seccompProfile ?? psc.seccompProfile)?.type;
  if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') {
    issues.push({ rule: 'security', message: `${where}: seccompProfile is not RuntimeDefault` });
  }
  return issues;
}

function matches(selector, labels) {
  if (!selector || !labels) return false;
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** Checks of one object in the context of the whole rendered set. */
function policyIssues(o, ctx) {
  const issues = [];
  const specType = WORKLOAD_SPEC_TYPES[o.kind];
  if (specType) issues.push(...unknownKeys(o.spec, specType, 'spec'));

  const pod = podSpecOf(o);
  if (pod?.spec) {
    issues.push(...unknownKeys(pod.spec, 'kubernetes-models/v1/PodSpec', pod.path));
    const nats = isNats(o);
    const trainer = pod.labels?.['app.kubernetes.io/component'] === 'training';
    const all = [
      ...(pod.spec.initContainers ?? []).map((c, i) => ({ c, init: true, path: `${pod.path}.initContainers[${i}]` })),
      ...(pod.spec.containers ?? []).map((c, i) => ({ c, init: false, path: `${pod.path}.containers[${i}]` })),
    ];
    for (const { c, init, path } of all) {
      const where = `container ${c.name ?? path}`;
      issues.push(...unknownKeys(c, 'kubernetes-models/v1/Container', path));
      issues.push(...checkImage(c, where));
      issues.push(...checkResources(c, where));
      issues.push(...checkSecurity(pod.spec, c, where));
      if (!init) issues.push(...checkProbes(c, where, nats));
      if (trainer) issues.push(...checkTrainerImage(c, where));
    }
    for (const v of pod.spec.volumes ?? []) {
      const claimName = v.persistentVolumeClaim?.claimName;
      if (trainer && claimName && ctx.modelClaims.has(claimName)) {
        issues.push({
          rule: 'model-at-client',
          message: `volume ${v.name}: a trainer mounts PersistentVolumeClaim ${claimName}, which holds model weights (fedbiot.io/model-weights); trainers get only the emulator package, over NATS`,
        });
      }
      if (trainer && v.hostPath) {
        issues.push({
          rule: 'model-at-client',
          message: `volume ${v.name}: a trainer mounts hostPath ${v.hostPath.path}; trainers keep only their own cache (emptyDir)`,
        });
      }
      if (v.configMap && !ctx.names.ConfigMap.has(v.configMap.name) && v.configMap.optional !== true) {
        issues.push({
          rule: 'reference',
          message: `volume ${v.name}: ConfigMap ${v.configMap.name} is not in the rendered set`,
        });
      }
      const claim = v.persistentVolumeClaim?.claimName;
      if (claim && !ctx.names.PersistentVolumeClaim.has(claim)) {
        issues.push({
          rule: 'reference',
          message: `volume ${v.name}: PersistentVolumeClaim ${claim} is not in the rendered set`,
        });
      }
    }
  }

  if (o.kind === 'ConfigMap' && typeof o.data?.['job.yaml'] === 'string') {
    let mode;
    try {
      mode = parseYaml(o.data['job.yaml'])?.eval?.mode;
    } catch {
      // A malformed job spec is the job-spec loader's error to report, with its own context.
    }
    if (mode === 'simulation') {
      issues.push({
        rule: 'eval-private',
        message:
          "job.yaml: eval.mode is simulation, in which the evaluator reads every client's test set; a deployment evaluates in mode private (AdapFu on eval.ownerValidation, AdapEmu by each client's trainer)",
      });
    }
  }

  if ((o.kind === 'Service' && o.spec?.selector) || o.kind === 'PodDisruptionBudget') {
    const selector = o.kind === 'Service' ? o.spec.selector : o.spec?.selector?.matchLabels;
    if (selector && !ctx.podLabels.some((labels) => matches(selector, labels))) {
      issues.push({ rule: 'reference', message: `selector ${JSON.stringify(selector)} matches no pod template` });
    }
  }

  if (o.kind === 'ScaledObject') {
    const target = o.spec?.scaleTargetRef;
    const targetKind = target?.kind ?? 'Deployment';
    if (target?.name && !(ctx.names[targetKind]?.has(target.name) ?? false)) {
      issues.push({
        rule: 'reference',
        message: `scaleTargetRef ${targetKind}/${target.name} is not in the rendered set`,
      });
    }
    for (const [i, t] of (o.spec?.triggers ?? []).entries()) {
      if (t?.type !== 'nats-jetstream') continue;
      const md = t.metadata ?? {};
      for (const k of ['natsServerMonitoringEndpoint', 'stream', 'consumer']) {
        if (!md[k]) issues.push({ rule: 'keda', message: `triggers[${i}] (nats-jetstream): metadata.${k} is missing` });
      }
      if (ctx.jobId && md.stream && md.stream !== `FL_TASKS_${ctx.jobId}`) {
        issues.push({
          rule: 'keda',
          message: `triggers[${i}]: stream ${md.stream} is not the job's work queue FL_TASKS_${ctx.jobId} (job spec id ${ctx.jobId})`,
        });
      }
    }
  }
  return issues;
}

function warningsOf(o) {
  if (o.kind === 'Secret' && o.metadata?.annotations?.['fedbiot.io/example-credentials'] === 'true') {
    return [
      `Secret ${o.metadata.name} holds the repository's EXAMPLE credentials; replace them before a real deployment`,
    ];
  }
  return [];
}

/** Context for cross-object checks: names by kind, pod template labels, the job id. */
function contextOf(objects) {
  const names = new Proxy({}, { get: (t, k) => (t[k] ??= new Set()) });
  const podLabels = [];
  const modelClaims = new Set();
  let jobId;
  for (const o of objects) {
    if (o?.kind && o.metadata?.name) names[o.kind].add(o.metadata.name);
    if (o?.kind === 'PersistentVolumeClaim' && o.metadata?.labels?.['fedbiot.io/model-weights'] === 'true')
      modelClaims.add(o.metadata.name);
    if (o?.kind === 'StatefulSet') {
      for (const t of o.spec?.volumeClaimTemplates ?? [])
        if (t.metadata?.name) names.PersistentVolumeClaim.add(t.metadata.name);
    }
    const pod = o && podSpecOf(o);
    if (pod?.labels) podLabels.push(pod.labels);
    if (o?.kind === 'ConfigMap' && typeof o.data?.['job.yaml'] === 'string') {
      try {
        const spec = parseYaml(o.data['job.yaml']);
        if (typeof spec?.job?.id === 'string') jobId = spec.job.id;
      } catch {
        // A malformed job spec is the job-spec loader's error to report, with its own context.
      }
    }
  }
  return { names, podLabels, jobId, modelClaims };
}

/** Validates the objects of one rendered set. */
export async function validateObjects(objects) {
  const ctx = contextOf(objects);
  const results = [];
  for (const o of objects) {
    results.push({
      kind: o?.kind ?? '?',
      name: o?.metadata?.name ?? '?',
      namespace: o?.metadata?.namespace,
      schema: await schemaErrors(o),
      policy: policyIssues(o, ctx),
      warnings: warningsOf(o),
    });
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// CLI

function defaultTargets() {
  const overlays = join(repoRoot, 'deploy', 'k8s', 'overlays');
  if (!existsSync(overlays)) return [];
  return readdirSync(overlays)
    .map((n) => join(overlays, n))
    .filter((p) => statSync(p).isDirectory() && existsSync(join(p, 'kustomization.yaml')))
    .toSorted();
}

function printTable(report) {
  for (const t of report.targets) {
    console.log(`\n== ${t.target}`);
    if (t.error) {
      console.log(`   FAIL  ${t.error}`);
      continue;
    }
    const rows = t.objects.map((r) => [
      `${r.kind}/${r.name}`,
      r.schema.length ? 'FAIL' : 'ok',
      r.policy.length ? 'FAIL' : 'ok',
    ]);
    const w = Math.max(6, ...rows.map((r) => r[0].length));
    console.log(`   ${'OBJECT'.padEnd(w)}  SCHEMA  POLICY`);
    t.objects.forEach((r, i) => {
      console.log(`   ${rows[i][0].padEnd(w)}  ${rows[i][1].padEnd(6)}  ${rows[i][2]}`);
      for (const m of r.schema) console.log(`       schema: ${m}`);
      for (const p of r.policy) console.log(`       ${p.rule}: ${p.message}`);
      for (const m of r.warnings) console.log(`       warning: ${m}`);
    });
    const bad = t.objects.filter((r) => r.schema.length || r.policy.length).length;
    console.log(`   ${t.objects.length - bad} valid, ${bad} invalid`);
  }
  console.log(report.failed ? `\nFAILED: ${report.failed} invalid object(s) or render error(s)` : '\nall valid');
}

async function main(argv) {
  const json = argv.includes('--json');
  const args = argv.filter((a) => a !== '--json');
  for (const a of args) {
    if (a.startsWith('-') && a !== '-') {
      console.error(`validate-k8s: unknown option ${a}\nusage: validate-k8s.mjs [--json] [DIR... | -]`);
      return 2;
    }
  }
  const targets = args.length ? args : defaultTargets();
  if (targets.length === 0) {
    console.error('validate-k8s: no kustomization directories given and none under deploy/k8s/overlays');
    return 2;
  }
  const report = { targets: [], failed: 0 };
  for (const target of targets) {
    const label = target === '-' ? '<stdin>' : relative(process.cwd(), resolve(target)) || '.';
    let rendered;
    if (target === '-') {
      rendered = { text: readFileSync(0, 'utf8') };
    } else if (!existsSync(join(target, 'kustomization.yaml'))) {
      rendered = { error: `${target} has no kustomization.yaml` };
    } else {
      rendered = render(target);
    }
    if (rendered.error) {
      report.targets.push({ target: label, error: rendered.error, objects: [] });
      report.failed++;
      continue;
    }
    const objects = await validateObjects(parseObjects(rendered.text, label));
    report.failed += objects.filter((r) => r.schema.length || r.policy.length).length;
    report.targets.push({ target: label, objects });
  }
  if (json) console.log(JSON.stringify(report, null, 2));
  else printTable(report);
  return report.failed ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      console.error(`validate-k8s: ${e instanceof ToolError ? '' : 'error: '}${e.message}`);
      process.exit(2);
    },
  );
}
