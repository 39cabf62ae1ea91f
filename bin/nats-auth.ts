/**
 * `npm run nats-auth -- --job job.yaml --out DIR [--clients a,b,c] [--credentials nkey|password] [--force]`
 *
 * Generates the NATS identities of one job: one per federated client (a data owner's trainer) and one per service
 * role, each with the subject permissions of libs/protocol/src/auth.ts, and writes
 *   DIR/auth.conf          the `authorization { users = [...] }` block for nats-server (include it in nats.conf);
 *                          NKey users: public keys only; password users: it holds the passwords (mode 0600)
 *   DIR/<identity>.nk      the NKey seed of each identity (mode 0600): the file NATS_CREDS_FILE points at
 *   DIR/<identity>.password  (with --credentials password) the password, for NATS_USER + NATS_PASSWORD_FILE
 *   DIR/identities.json    name, kind, user (public key or user name), inbox prefix, secret file: no secrets
 * and prints the same as a table. Each process then runs with NATS_CREDS_FILE (or NATS_USER and
 * NATS_PASSWORD_FILE) and NATS_INBOX_PREFIX of its identity; a data owner's trainer also with CLIENT_ID.
 *
 * Client ids: --clients, else the ids in the job's federation manifest ('demo': the built-in federation).
 * Permissions name the job id, so a new job id needs new identities. DIR must be empty or missing (existing
 * credentials are never overwritten) unless --force.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { loadJobSpec, type JobSpec, demoFederationDir, readManifest } from '../libs/fedbiot/src/index.js';
import { defaultCacheRoot } from '../libs/model/src/index.js';
import { generateJobAuth } from '../libs/protocol/src/index.js';

const USAGE =
  'usage: npm run nats-auth -- --job job.yaml --out DIR [--clients a,b,c] [--credentials nkey|password] [--force]';

interface Args {
  readonly job: string;
  readonly out: string;
  readonly clients?: readonly string[];
  readonly credentials: 'nkey' | 'password';
  readonly force: boolean;
}

function parseArgs(argv: readonly string[]): Args {
  const values = new Map<string, string>();
  let force = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--force') force = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (['--job', '--out', '--clients', '--credentials'].includes(a) && argv[i + 1] !== undefined)
      values.set(a.slice(2), argv[++i]!);
    else throw new Error(`unknown or incomplete argument ${a}\n${USAGE}`);
  }
  const job = values.get('job');
  const out = values.get('out');
  if (!job || !out) throw new Error(`--job and --out are required\n${USAGE}`);
  const credentials = values.get('credentials') ?? 'nkey';
  if (credentials !== 'nkey' && credentials !== 'password')
    throw new Error(`--credentials: ${credentials} is neither nkey nor password`);
  const clients = values
    .get('clients')
    ?.split(',')
    .map((c) => c.trim());
  return { job, out, credentials, force, ...(clients ? { clients } : {}) };
}

/** The client ids of the job's federation manifest (a folder holding one, or its path), validated like a job's. */
async function clientsOf(spec: JobSpec, specFile: string): Promise<string[]> {
  const where = spec.data.federation;
  const p = where === 'demo' ? await demoFederationDir(defaultCacheRoot(), spec.job.seed) : resolve(where);
  const manifest = existsSync(p) && statSync(p).isFile() ? p : join(p, 'manifest.json');
  if (!existsSync(manifest))
    throw new Error(
      `${specFile}: data.federation ${p} has no manifest.json to take the client ids from; pass --clients a,b,c`,
    );
  return (await readManifest(manifest)).clients.map((c) => c.id);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const spec = await loadJobSpec(args.job);
  if (!spec.job.id) throw new Error(`${args.job}: job.id is required (the permissions name the job's subjects)`);
  const clients = args.clients ?? (await clientsOf(spec, args.job));
  if (existsSync(args.out) && readdirSync(args.out).length > 0 && !args.force)
    throw new Error(`--out ${args.out} is not empty: its credentials are kept (pass --force to replace them)`);
  const auth = generateJobAuth({ jobId: spec.job.id, clients, credentials: args.credentials });

  await mkdir(args.out, { recursive: true, mode: 0o700 });
  const secretFile = async (name: string, text: string): Promise<void> => {
    const path = join(args.out, name);
    await writeFile(path, text, { mode: 0o600 });
    await chmod(path, 0o600); // also when --force replaced an existing file with other permissions
  };
  const rows: { name: string; kind: string; user: string; inboxPrefix: string; secretFile: string }[] = [];
  for (const id of auth.identities) {
    const file = id.seed !== undefined ? `${id.name}.nk` : `${id.name}.password`;
    await secretFile(file, `${id.seed ?? id.password}\n`);
    rows.push({ name: id.name, kind: id.kind, user: id.user, inboxPrefix: id.inboxPrefix, secretFile: file });
  }
  const header =
    `# NATS users of FedBiOT job ${spec.job.id}, clients ${clients.join(', ')} (generated by bin/nats-auth.ts).\n` +
    '# Include from nats.conf; regenerate for a new job id or client list.\n';
  if (args.credentials === 'password') await secretFile('auth.conf', header + auth.config);
  else await writeFile(join(args.out, 'auth.conf'), header + auth.config);
  await writeFile(
    join(args.out, 'identities.json'),
    JSON.stringify({ jobId: spec.job.id, clients, identities: rows }, null, 1) + '\n',
  );

  const widths = [8, 7, 56, 8].map((w, i) =>
    Math.max(w, ...rows.map((r) => [r.name, r.kind, r.user, r.inboxPrefix][i]!.length)),
  );
  const line = (cells: readonly string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  console.log(line(['identity', 'kind', 'user', 'NATS_INBOX_PREFIX']));
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const r of rows) console.log(line([r.name, r.kind, r.user, r.inboxPrefix]));
  console.log(
    `\nwrote ${join(args.out, 'auth.conf')}, ${rows.length} secret files (mode 0600) and identities.json in ${args.out}`,
  );
}

main().catch((e: unknown) => {
  console.error(`nats-auth: ${(e as Error).message}`);
  process.exit(1);
});
