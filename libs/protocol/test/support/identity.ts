import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import type { NatsIdentity } from '../../src/auth.js';
import { connectTransport } from '../../src/connection.js';
import type { PrivateNats } from './nats-server.js';

/** A permission violation the server reported to a connection. */
export interface Denial {
  operation: string;
  subject: string;
}

/**
 * Connects to `server` as `who` through the environment variables the services read (seed file + inbox prefix);
 * `denials` collects the permission violations the server reports on the connection.
 */
export async function connectAs(
  server: PrivateNats,
  who: NatsIdentity,
): Promise<{ nc: NatsConnection; denials: Denial[] }> {
  const file = join(server.dir, `${who.name}.nk`);
  await writeFile(file, `${who.seed}\n`, { mode: 0o600 });
  const nc = await connectTransport(server.url, {
    env: { NATS_CREDS_FILE: file, NATS_INBOX_PREFIX: who.inboxPrefix },
  });
  const denials: Denial[] = [];
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'error' && s.error.name === 'PermissionViolationError') {
        const e = s.error as Error & { operation: string; subject: string };
        denials.push({ operation: e.operation, subject: e.subject });
      }
    }
  })();
  return { nc, denials };
}
