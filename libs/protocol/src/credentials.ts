/**
 * NATS credentials and TLS from the environment (deploy/README.md §1). Secrets are read from files or variables
 * and go only into the connection options; errors name the variable and the file, never the secret.
 *
 *   NATS_CREDS_FILE      NKey seed file (`SU...`, nats.js nkeyAuthenticator) or `.creds` file (JWT + seed)
 *   NATS_USER            user name, with NATS_PASSWORD or NATS_PASSWORD_FILE
 *   NATS_TLS_CA_FILE     CA bundle that signs the server certificate (enables TLS)
 *   NATS_TLS_CERT_FILE   client certificate (mutual TLS), with NATS_TLS_KEY_FILE
 *   NATS_INBOX_PREFIX    reply-inbox prefix the user may subscribe to (auth.ts `inboxPrefixOf`)
 */
import { readFileSync } from 'node:fs';
import { credsAuthenticator, nkeyAuthenticator, type NodeConnectionOptions } from '@nats-io/transport-node';

/** The part of the connection options that carries identity and TLS. */
export type TransportSecurity = Pick<NodeConnectionOptions, 'authenticator' | 'user' | 'pass' | 'tls' | 'inboxPrefix'>;

/** A credential or TLS setting that cannot be used; names the variable (and file), never the secret. */
export class CredentialsError extends Error {
  override readonly name = 'CredentialsError';
  constructor(
    readonly variable: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(`${variable}: ${message}`, options);
  }
}

function readSecretFile(variable: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    // The fs error names only the path and the errno.
    throw new CredentialsError(variable, `cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

/** Authenticator for the content of NATS_CREDS_FILE: a `.creds` file (JWT + seed) or a bare NKey user seed. */
function authenticatorFor(path: string, text: string): NonNullable<TransportSecurity['authenticator']> {
  if (text.includes('-----BEGIN NATS USER JWT-----')) return credsAuthenticator(new TextEncoder().encode(text));
  const seed = text.trim();
  if (!/^SU[A-Z2-7]{56}$/.test(seed)) {
    throw new CredentialsError(
      'NATS_CREDS_FILE',
      `${path} holds neither a .creds file nor an NKey user seed (one line starting with SU, 58 characters)`,
    );
  }
  return nkeyAuthenticator(new TextEncoder().encode(seed));
}

/**
 * Connection options from the variables above; `{}` when none is set (anonymous, plain TCP). Throws
 * CredentialsError for unreadable files, a password without user, or a certificate without key.
 */
export function transportSecurityFromEnv(env: NodeJS.ProcessEnv = process.env): TransportSecurity {
  const out: { -readonly [K in keyof TransportSecurity]: TransportSecurity[K] } = {};
  const credsFile = env['NATS_CREDS_FILE'];
  const user = env['NATS_USER'];
  const passwordFile = env['NATS_PASSWORD_FILE'];
  let password = env['NATS_PASSWORD'];
  if (credsFile) {
    if (user) throw new CredentialsError('NATS_USER', 'set either NATS_CREDS_FILE or NATS_USER, not both');
    out.authenticator = authenticatorFor(credsFile, readSecretFile('NATS_CREDS_FILE', credsFile));
  }
  if (passwordFile) {
    if (password !== undefined)
      throw new CredentialsError('NATS_PASSWORD_FILE', 'set either NATS_PASSWORD or NATS_PASSWORD_FILE, not both');
    // One trailing newline is how editors and `kubectl create secret --from-file` leave it; it is not part of it.
    password = readSecretFile('NATS_PASSWORD_FILE', passwordFile).replace(/\r?\n$/, '');
  }
  if (user) {
    if (password === undefined) throw new CredentialsError('NATS_USER', 'needs NATS_PASSWORD or NATS_PASSWORD_FILE');
    out.user = user;
    out.pass = password;
  } else if (password !== undefined) {
    throw new CredentialsError(passwordFile ? 'NATS_PASSWORD_FILE' : 'NATS_PASSWORD', 'needs NATS_USER');
  }
  const ca = env['NATS_TLS_CA_FILE'];
  const cert = env['NATS_TLS_CERT_FILE'];
  const key = env['NATS_TLS_KEY_FILE'];
  if (Boolean(cert) !== Boolean(key))
    throw new CredentialsError(
      cert ? 'NATS_TLS_KEY_FILE' : 'NATS_TLS_CERT_FILE',
      'client certificate and key go together',
    );
  if (ca || cert) {
    for (const [v, p] of [
      ['NATS_TLS_CA_FILE', ca],
      ['NATS_TLS_CERT_FILE', cert],
      ['NATS_TLS_KEY_FILE', key],
    ] as const) {
      if (p) readSecretFile(v, p); // fail here, naming the variable, rather than deep inside the TLS handshake
    }
    out.tls = { ...(ca ? { caFile: ca } : {}), ...(cert && key ? { certFile: cert, keyFile: key } : {}) };
  }
  const inbox = env['NATS_INBOX_PREFIX'];
  if (inbox) out.inboxPrefix = inbox;
  return out;
}

/** `servers` with any `user:password@` userinfo replaced by `***@`, for messages and logs. */
export function redactServers(servers: string): string {
  return servers.replace(/([a-z][a-z0-9+.-]*:\/\/)[^@/\s,]*@/gi, '$1***@');
}
