/**
 * A service process's start-up. Whatever fails before the service is up (a bad environment variable, job spec or
 * credentials file, an unreachable NATS) is one JSON log line that names it, and exit code 1, not an uncaught stack
 * trace: an operator reads `kubectl logs` of a crash-looping pod, and a log collector parses it like every other line.
 */
import { JsonLogger } from './logger.js';

/** The fields of a start-up error worth a log line: name, message and what it names (variable, file, path, issues). */
export function startupErrorFields(e: unknown): Record<string, unknown> {
  if (!(e instanceof Error)) return { error: String(e) };
  const fields: Record<string, unknown> = { error: e.name, reason: e.message };
  const named = e as unknown as Record<string, unknown>;
  for (const key of ['variable', 'file', 'path', 'code', 'issues'])
    if (named[key] !== undefined) fields[key] = named[key];
  if (e.cause instanceof Error) fields['cause'] = `${e.cause.name}: ${e.cause.message}`;
  return fields;
}

/** Runs `start`; on failure writes `service failed to start` with startupErrorFields and exits with code 1. */
export async function startProcess<T>(service: string, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (e) {
    new JsonLogger(service).write('error', 'service failed to start', startupErrorFields(e));
    process.exit(1);
  }
}
