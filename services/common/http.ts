/**
 * The Nest shell of a service: a hybrid app with /health/live, /health/ready (503 until the role is ready and while
 * NATS is down), /metrics, the role's controllers (HTTP routes and message handlers) and the role's transport
 * strategies as connected microservices (the trainer's JetStream work queue). A role comes either as an object
 * (startService: its controllers and ROLE in a module made here) or as a module of its own (startServiceModule: the
 * client-trainer's, whose connection and stores are injected providers, services/common/providers.ts).
 */
import 'reflect-metadata';
import {
  Controller,
  Get,
  Header,
  Inject,
  Module,
  ServiceUnavailableException,
  type DynamicModule,
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
    controllers: [...(role.controllers ?? [])],
    providers: [{ provide: ROLE, useValue: role }],
    exports: [ROLE],
  })
  // oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
  class RoleModule {}
  return serve<R>(RoleModule, port, extraControllers);
}

/**
 * Starts the HTTP shell around a role's own module, which provides (and exports) ROLE. The module's providers are
 * resolved first (its NATS connection opens then), so liveness answers once they are; readiness as startService.
 */
export function startServiceModule<R extends ServiceRole>(
  roleModule: DynamicModule,
  port: number,
  extraControllers: Type[] = [],
): Promise<RunningService<R>> {
  return serve<R>(roleModule, port, extraControllers);
}

async function serve<R extends ServiceRole>(
  roleModule: DynamicModule | Type,
  port: number,
  extraControllers: Type[],
): Promise<RunningService<R>> {
  @Module({ imports: [roleModule], controllers: [HealthController, MetricsController, ...extraControllers] })
  // oxlint-disable-next-line no-extraneous-class -- a Nest module is its decorator
  class ServiceModule {}
  // The role's logger is one of the module's providers: Nest's own lines wait in its buffer until it is known.
  // A provider that fails (bad credentials, unreachable NATS) is rethrown, not flushed through Nest's console
  // logger: the process's start-up wrapper (startup.ts) writes it as one JSON line.
  const app = await NestFactory.create(ServiceModule, { bufferLogs: true, abortOnError: false, autoFlushLogs: false });
  const role = app.get<R>(ROLE);
  app.useLogger(role.log);
  // A hybrid app: HTTP (health, metrics, dashboard) plus the role's message transports.
  for (const strategy of role.transports ?? []) app.connectMicroservice({ strategy }, { inheritAppConfig: true });
  // All interfaces by default: kubelet probes and Prometheus reach the pod IP. HTTP_HOST=127.0.0.1 keeps it local.
  const host = process.env['HTTP_HOST'] ?? '0.0.0.0';
  await app.listen(port, host);
  const address = app.getHttpServer().address() as { port: number };
  const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${address.port}`;
  role.log.info('http listening', { url });
  try {
    await role.start();
    await app.startAllMicroservices();
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
  return serviceProcess(await startService(role, port, extraControllers));
}

/** Stops a started service cleanly on SIGTERM / SIGINT, then exits. */
export function serviceProcess<R extends ServiceRole>(svc: RunningService<R>): RunningService<R> {
  const role = svc.role;
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
