/**
 * The HTTP shell of a service, as a Nest app: /health/live, /health/ready (503 until the role is ready), /metrics,
 * plus any role-specific controllers. The NATS side lives in the role (JetStream pull consumers, KV and object
 * store are not Nest transports), so Nest only carries HTTP, logging and lifecycle.
 */
import 'reflect-metadata';
import {
  Controller,
  Get,
  Header,
  Inject,
  Module,
  ServiceUnavailableException,
  type INestApplication,
  type Type,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { ServiceRole } from './role.js';

export const ROLE = Symbol('ServiceRole');

@Controller('health')
class HealthController {
  constructor(@Inject(ROLE) private readonly role: ServiceRole) {}

  @Get('live')
  live(): { status: string } {
    return { status: 'ok' };
  }

  @Get('ready')
  ready(): { status: string } {
    if (!this.role.ready()) throw new ServiceUnavailableException(`${this.role.name} is not ready`);
    return { status: 'ready' };
  }
}

@Controller()
class MetricsController {
  constructor(@Inject(ROLE) private readonly role: ServiceRole) {}

  @Get('metrics')
  @Header('Content-Type', 'text/plain; version=0.0.4; charset=utf-8')
  async metrics(): Promise<string> {
    return this.role.metrics.registry.metrics();
  }
}

export interface RunningService<R extends ServiceRole> {
  readonly role: R;
  readonly app: INestApplication;
  /** http://127.0.0.1:<port> */
  readonly url: string;
  /** Stops the role, then the HTTP server. */
  close(): Promise<void>;
}

/**
 * Starts the HTTP shell on `port` (0: any free port), then the role. Liveness answers while the role loads;
 * readiness only after `role.start()` resolved.
 */
export async function startService<R extends ServiceRole>(
  role: R,
  port: number,
  extraControllers: Type[] = [],
): Promise<RunningService<R>> {
  @Module({
    controllers: [HealthController, MetricsController, ...extraControllers],
    providers: [{ provide: ROLE, useValue: role }],
  })
  // oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
  class ServiceModule {}
  const app = await NestFactory.create(ServiceModule, { logger: role.log, abortOnError: false });
  // All interfaces by default: kubelet probes and Prometheus reach the pod IP. HTTP_HOST=127.0.0.1 keeps it local.
  const host = process.env['HTTP_HOST'] ?? '0.0.0.0';
  await app.listen(port, host);
  const address = app.getHttpServer().address() as { port: number };
  const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${address.port}`;
  role.log.info('http listening', { url });
  try {
    await role.start();
  } catch (e) {
    await app.close();
    throw e;
  }
  role.log.info('ready');
  let closed = false;
  return {
    role,
    app,
    url,
    close: async () => {
      if (closed) return;
      closed = true;
      await role.stop();
      await app.close();
    },
  };
}

/** Entry point of a service process: start, then stop cleanly on SIGTERM / SIGINT. */
export async function runServiceProcess<R extends ServiceRole>(
  role: R,
  port: number,
  extraControllers: Type[] = [],
): Promise<RunningService<R>> {
  const svc = await startService(role, port, extraControllers);
  const shutdown = (signal: string): void => {
    role.log.info('shutting down', { signal });
    svc.close().then(
      () => process.exit(0),
      (e: unknown) => {
        role.log.write('error', 'shutdown failed', { error: String(e) });
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  return svc;
}
