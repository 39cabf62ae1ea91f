/** Publishing one validated message on core NATS. */
import type { NatsConnection } from '@nats-io/transport-node';
import type { z } from 'zod';
import { ProtocolError } from './errors.js';
import { encodeMessage } from './messages.js';

/**
 * Validates `value` against `schema` and publishes it on `subject`. Throws ProtocolError when the value is
 * invalid or larger than the server's max_payload (1 MB by default): messages carry BlobRefs, never weights.
 */
export function publishMessage<S extends z.ZodType>(
  nc: NatsConnection,
  subject: string,
  schema: S,
  value: z.input<S>,
): void {
  const bytes = encodeMessage(schema, value, subject);
  const max = nc.info?.max_payload ?? 1024 * 1024;
  if (bytes.length > max) {
    throw new ProtocolError(subject, [
      {
        path: '',
        reason: `message is ${bytes.length} bytes, the server accepts ${max}: put bulk data in the BlobStore`,
      },
    ]);
  }
  nc.publish(subject, bytes);
}
