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
//   NATS clustering, for every NATS StatefulSet (name nats or label app.kubernetes.io/name: nats) with its
//   nats.conf read from the mounted ConfigMap (includes resolved among the ConfigMap's keys):
//   nats-cluster   more than one replica needs a cluster {} block, and a cluster block more than one replica;
//                  a clustered StatefulSet runs an odd number (>= 3) of servers (RAFT needs a majority: 4 survive
//                  no more losses than 3), sets server_name per pod ($POD_NAME from metadata.name: JetStream
//                  knows its peers by name), names a headless serviceName, and its routes list every pod
//                  <name>-<i>.<serviceName> on the cluster port
//   nats-quorum    a clustered StatefulSet has a PodDisruptionBudget selecting its pods that keeps a majority up
//                  (minAvailable >= replicas/2 + 1, or maxUnavailable <= replicas - majority)
//   nats-anti-affinity  a clustered StatefulSet's pods repel each other across nodes: a required podAntiAffinity
//                  term with topologyKey kubernetes.io/hostname whose selector matches the pod's own labels
//   js-replicas    every container with NATS_URL sets FEDBIOT_JS_REPLICAS (default 1) to at most the number of
//                  JetStream servers it reaches (more cannot be placed); on a cluster to more than 1 and an odd
//                  count (an R1 stream is lost with its node)
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

  if (o.kind === 'StatefulSet' && isNats(o)) {
    const server = ctx.natsServers.find((s) => s.sts === o);
    if (server) {
      issues.push(...clusterIssues(server, ctx.objects));
      if (server.clustered && server.replicas > 1) {
        issues.push(...quorumIssues(server, ctx.objects), ...antiAffinityIssues(server));
      }
    }
  }
  issues.push(...jsReplicaIssues(o, ctx));

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

// ---------------------------------------------------------------------------------------------
// NATS server configuration (the subset of the nats-server config syntax the manifests use: key/value pairs
// separated by `:`, `=` or blanks, `{}` maps, `[]` arrays, quoted and bare strings, `#` and `//` comments,
// `include <file>` resolved among `files`).

/** Parses a nats-server config into plain objects (keys lower-cased, scalars as strings). */
export function parseNatsConf(text, files = {}, depth = 0) {
  if (depth > 8) throw new Error('nats.conf: includes nested too deeply');
  let i = 0;
  const n = text.length;
  const skip = (newlines) => {
    for (;;) {
      const ch = text[i];
      if (ch === '#' || (ch === '/' && text[i + 1] === '/')) {
        while (i < n && text[i] !== '\n') i++;
      } else if (ch === ' ' || ch === '\t' || ch === '\r' || (newlines && (ch === '\n' || ch === ',' || ch === ';'))) {
        i++;
      } else return;
    }
  };
  const quoted = () => {
    const q = text[i++];
    let out = '';
    while (i < n && text[i] !== q) out += text[i++];
    i++;
    return out;
  };
  const bare = (stops) => {
    let out = '';
    while (i < n && !stops.includes(text[i])) out += text[i++];
    return out.trim();
  };
  const value = () => {
    skip(false);
    const ch = text[i];
    if (ch === '{') {
      i++;
      return map('}');
    }
    if (ch === '[') {
      i++;
      const arr = [];
      for (;;) {
        skip(true);
        if (i >= n) throw new Error('nats.conf: unterminated array');
        if (text[i] === ']') {
          i++;
          return arr;
        }
        arr.push(
          text[i] === '"' || text[i] === "'" ? quoted() : text[i] === '{' || text[i] === '[' ? value() : bare(',]\n#'),
        );
      }
    }
    if (ch === '"' || ch === "'") return quoted();
    return bare(',;}\n#');
  };
  const map = (close) => {
    const out = {};
    for (;;) {
      skip(true);
      if (i >= n) {
        if (close) throw new Error(`nats.conf: missing ${close}`);
        return out;
      }
      if (text[i] === close) {
        i++;
        return out;
      }
      const key = (text[i] === '"' || text[i] === "'" ? quoted() : bare(' \t:={\n')).toLowerCase();
      if (key === '') throw new Error(`nats.conf: unexpected ${JSON.stringify(text[i])}`);
      if (key === 'include') {
        skip(false);
        const file = (text[i] === '"' || text[i] === "'" ? quoted() : bare(' \t\n#;')).replace(/^\.\//, '');
        if (files[file] === undefined) throw new Error(`nats.conf: include ${file}: not in the ConfigMap`);
        Object.assign(out, parseNatsConf(files[file], files, depth + 1));
        continue;
      }
      skip(false);
      if (text[i] === ':' || text[i] === '=') i++;
      out[key] = value();
    }
  };
  return map(undefined);
}

/** The NATS StatefulSets of a rendered set, each with its parsed config (or the reason there is none). */
function natsServersOf(objects) {
  const configMaps = new Map(objects.filter((o) => o?.kind === 'ConfigMap').map((o) => [o.metadata?.name, o]));
  return objects
    .filter((o) => o?.kind === 'StatefulSet' && isNats(o))
    .map((sts) => {
      const replicas = sts.spec?.replicas ?? 1;
      const vols = sts.spec?.template?.spec?.volumes ?? [];
      const cm = vols
        .map((v) => configMaps.get(v.configMap?.name))
        .find((c) => typeof c?.data?.['nats.conf'] === 'string');
      let conf;
      let confError;
      if (cm) {
        try {
          conf = parseNatsConf(cm.data['nats.conf'], cm.data);
        } catch (e) {
          confError = e.message;
        }
      }
      return { sts, replicas, conf, confError, clustered: replicas > 1 || conf?.cluster !== undefined };
    });
}

/** Port of a `listen` / `port` pair (`host:port` or a bare port). */
function listenPort(block) {
  if (block?.port !== undefined) return Number(block.port);
  const m = /:(\d+)$/.exec(String(block?.listen ?? ''));
  return m ? Number(m[1]) : undefined;
}

function clusterIssues(server, objects) {
  const { sts, replicas, conf, confError } = server;
  const name = sts.metadata?.name;
  const issues = [];
  const cluster = conf?.cluster;
  if (confError) issues.push({ rule: 'nats-cluster', message: `nats.conf: ${confError}` });
  if (replicas > 1 && conf && cluster === undefined) {
    issues.push({
      rule: 'nats-cluster',
      message: `${replicas} replicas but nats.conf has no cluster {} block: they would run as ${replicas} separate servers, each with its own JetStream`,
    });
  }
  if (cluster !== undefined && replicas < 2) {
    issues.push({
      rule: 'nats-cluster',
      message: `nats.conf has a cluster {} block but the StatefulSet runs ${replicas} replica`,
    });
  }
  if (replicas > 1 && (replicas % 2 === 0 || replicas < 3)) {
    issues.push({
      rule: 'nats-cluster',
      message: `replicas ${replicas} is even: a JetStream cluster needs a majority of its servers (RAFT), so run an odd number >= 3 (3 survive one loss; ${replicas} survive ${Math.floor((replicas - 1) / 2)})`,
    });
  }
  if (cluster === undefined) return issues;
  const serverName = String(conf.server_name ?? '');
  const podEnv = (sts.spec?.template?.spec?.containers ?? []).flatMap((c) => c.env ?? []);
  const fromPodName = (v) => podEnv.some((e) => e.name === v && e.valueFrom?.fieldRef?.fieldPath === 'metadata.name');
  const varName = /^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$/.exec(serverName)?.[1];
  if (!varName || !fromPodName(varName)) {
    issues.push({
      rule: 'nats-cluster',
      message: `server_name is ${serverName ? JSON.stringify(serverName) : 'not set'}: each pod needs its own stable name, e.g. server_name: $POD_NAME with POD_NAME from metadata.name (JetStream knows its RAFT peers by server name)`,
    });
  }
  const serviceName = sts.spec?.serviceName;
  const headless = objects.find(
    (o) => o?.kind === 'Service' && o.metadata?.name === serviceName && o.spec?.clusterIP === 'None',
  );
  if (!headless) {
    issues.push({
      rule: 'nats-cluster',
      message: `serviceName ${serviceName ?? '(none)'} is not a headless Service (clusterIP: None) in the rendered set: the routes need per-pod DNS names`,
    });
  }
  const port = listenPort(cluster) ?? 6222;
  const routes = Array.isArray(cluster.routes) ? cluster.routes.map(String) : [];
  const pods = Array.from({ length: replicas }, (_, k) => `${name}-${k}`);
  const routed = new Set();
  for (const r of routes) {
    let url;
    try {
      url = new URL(r);
    } catch {
      issues.push({ rule: 'nats-cluster', message: `route ${r} is not a URL` });
      continue;
    }
    const [pod, svc] = url.hostname.split('.');
    if (svc === serviceName && Number(url.port) === port) routed.add(pod);
  }
  const missing = pods.filter((p) => !routed.has(p));
  if (missing.length > 0) {
    issues.push({
      rule: 'nats-cluster',
      message: `cluster.routes do not list ${missing.map((p) => `${p}.${serviceName}:${port}`).join(', ')}: every pod of the ${replicas} must be routed (has ${JSON.stringify(routes)})`,
    });
  }
  return issues;
}

function quorumIssues(server, objects) {
  const { sts, replicas } = server;
  const labels = sts.spec?.template?.metadata?.labels;
  const majority = Math.floor(replicas / 2) + 1;
  const pdbs = objects.filter(
    (o) => o?.kind === 'PodDisruptionBudget' && matches(o.spec?.selector?.matchLabels, labels),
  );
  const keeps = (pdb) => {
    const { minAvailable, maxUnavailable } = pdb.spec ?? {};
    const count = (v, of) =>
      typeof v === 'string' && v.endsWith('%') ? Math.ceil((Number(v.slice(0, -1)) / 100) * of) : Number(v);
    if (minAvailable !== undefined) return count(minAvailable, replicas);
    if (maxUnavailable !== undefined) return replicas - count(maxUnavailable, replicas);
    return 0;
  };
  if (pdbs.length === 0) {
    return [
      {
        rule: 'nats-quorum',
        message: `no PodDisruptionBudget selects the ${replicas} NATS pods: a node drain may take the JetStream cluster below its majority of ${majority}`,
      },
    ];
  }
  const best = Math.max(...pdbs.map(keeps));
  if (best >= majority) return [];
  return [
    {
      rule: 'nats-quorum',
      message: `PodDisruptionBudget ${pdbs.map((p) => p.metadata?.name).join(', ')} keeps ${best} of ${replicas} NATS pods: voluntary disruptions may break the JetStream quorum of ${majority} (set minAvailable: ${majority})`,
    },
  ];
}

function antiAffinityIssues(server) {
  const { sts, replicas } = server;
  const labels = sts.spec?.template?.metadata?.labels;
  const terms =
    sts.spec?.template?.spec?.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
  const ok = terms.some(
    (t) =>
      t.topologyKey === 'kubernetes.io/hostname' &&
      t.labelSelector?.matchLabels &&
      matches(t.labelSelector.matchLabels, labels),
  );
  if (ok) return [];
  return [
    {
      rule: 'nats-anti-affinity',
      message: `the ${replicas} NATS pods may share a node: add a required podAntiAffinity term (topologyKey kubernetes.io/hostname, labelSelector matching the pod's labels), or one node's loss takes several replicas of every stream`,
    },
  ];
}

/** The NATS StatefulSet a service container reaches through its NATS_URL (host = a Service name). */
function natsServerFor(nats, servers, objects) {
  let host;
  try {
    host = new URL(nats.split(',')[0].trim()).hostname.split('.')[0];
  } catch {
    return undefined;
  }
  const svc = objects.find((o) => o?.kind === 'Service' && o.metadata?.name === host);
  if (svc?.spec?.selector) {
    const hit = servers.find((s) => matches(svc.spec.selector, s.sts.spec?.template?.metadata?.labels));
    if (hit) return hit;
  }
  return servers.length === 1 ? servers[0] : undefined;
}

function jsReplicaIssues(o, ctx) {
  const pod = podSpecOf(o);
  if (!pod?.spec || ctx.natsServers.length === 0) return [];
  const issues = [];
  for (const c of pod.spec.containers ?? []) {
    const env = new Map((c.env ?? []).map((e) => [e.name, e]));
    const url = env.get('NATS_URL')?.value;
    if (url === undefined) continue;
    const server = natsServerFor(url, ctx.natsServers, ctx.objects);
    if (!server) continue;
    const raw = env.get('FEDBIOT_JS_REPLICAS');
    const where = `container ${c.name}`;
    if (raw?.valueFrom) continue; // set out of band: not checkable offline
    const r = raw?.value === undefined ? 1 : Number(raw.value);
    const shown = raw?.value === undefined ? 'unset (1)' : raw.value;
    if (!Number.isInteger(r) || r < 1 || r > 5) {
      issues.push({
        rule: 'js-replicas',
        message: `${where}: FEDBIOT_JS_REPLICAS=${shown} is not an integer from 1 to 5`,
      });
    } else if (r > server.replicas) {
      issues.push({
        rule: 'js-replicas',
        message: `${where}: FEDBIOT_JS_REPLICAS=${shown} exceeds the ${server.replicas} JetStream server(s) of StatefulSet ${server.sts.metadata?.name}: no stream could be placed`,
      });
    } else if (server.clustered && (r < 2 || r % 2 === 0)) {
      issues.push({
        rule: 'js-replicas',
        message: `${where}: FEDBIOT_JS_REPLICAS=${shown} on the ${server.replicas}-node cluster ${server.sts.metadata?.name}: ${r < 2 ? "a stream on one node is lost with that node's volume" : 'an even replica count tolerates no more losses than one fewer'}; set it to 3`,
      });
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
  return { names, podLabels, jobId, modelClaims, objects, natsServers: natsServersOf(objects) };
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
