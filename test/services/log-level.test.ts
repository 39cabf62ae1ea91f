/** LOG_LEVEL: the services' JSON logs keep records at that level and above; a bad value is named at start. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JsonLogger, type LogRecord } from '../../services/common/logger.js';
import { logLevelFromEnv, logs } from '../../libs/fedbiot/src/index.js';

function recordsAt(level: string | undefined): string[] {
  const saved = process.env['LOG_LEVEL'];
  if (level === undefined) delete process.env['LOG_LEVEL'];
  else process.env['LOG_LEVEL'] = level;
  try {
    const out: LogRecord[] = [];
    const log = new JsonLogger('test', (r) => out.push(r));
    log.debug('framework detail', 'InstanceLoader');
    log.info('round collecting');
    log.warn('task rejected');
    log.error('task failed');
    return out.map((r) => r.level);
  } finally {
    if (saved === undefined) delete process.env['LOG_LEVEL'];
    else process.env['LOG_LEVEL'] = saved;
  }
}

test('LOG_LEVEL filters the JSON logs; the default is info', () => {
  assert.deepEqual(recordsAt(undefined), ['info', 'warn', 'error']);
  assert.deepEqual(recordsAt('debug'), ['debug', 'info', 'warn', 'error']);
  assert.deepEqual(recordsAt('WARN'), ['warn', 'error']);
  assert.deepEqual(recordsAt('error'), ['error']);
  assert.throws(
    () => recordsAt('verbose'),
    /LOG_LEVEL: "verbose" is not a level \(expected one of: debug, info, warn, error\)/,
  );
});

test("Nest's start-up lines are debug records; other framework messages stay info", () => {
  const out: LogRecord[] = [];
  const saved = process.env['LOG_LEVEL'];
  process.env['LOG_LEVEL'] = 'debug';
  try {
    const log = new JsonLogger('test', (r) => out.push(r));
    log.log('AppModule dependencies initialized', 'InstanceLoader');
    log.log('Mapped {/health/live, GET} route', 'RouterExplorer');
    log.log('Nest microservice successfully started', 'NestMicroservice');
    log.log('NatsStatus: type: "close", data: "".', 'ClientNats');
    log.log('something else', 'Custom');
  } finally {
    if (saved === undefined) delete process.env['LOG_LEVEL'];
    else process.env['LOG_LEVEL'] = saved;
  }
  assert.deepEqual(
    out.map((r) => [r.level, r['context']]),
    [
      ['debug', 'InstanceLoader'],
      ['debug', 'RouterExplorer'],
      ['debug', 'NestMicroservice'],
      ['debug', 'ClientNats'],
      ['info', 'Custom'],
    ],
  );
});

test('logLevelFromEnv and logs', () => {
  assert.equal(logLevelFromEnv({}), 'info');
  assert.equal(logLevelFromEnv({ LOG_LEVEL: ' Debug ' }), 'debug');
  assert.ok(logs('warn', 'info'));
  assert.ok(!logs('info', 'warn'));
});

/** A destination that keeps what pino writes. */
function capture(): { out: { write(s: string): void }; text(): string } {
  const chunks: string[] = [];
  return { out: { write: (s: string) => void chunks.push(s) }, text: () => chunks.join('') };
}

function withEnv<T>(vars: Record<string, string | undefined>, f: () => T): T {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars))
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  try {
    return f();
  } finally {
    for (const [k, v] of Object.entries(saved))
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  }
}

test('JSON (the default): one object per line with time, level name, service, msg and the fields', () => {
  const c = capture();
  withEnv({ LOG_LEVEL: undefined, LOG_FORMAT: undefined }, () => {
    const log = new JsonLogger('aggregator', undefined, { out: c.out });
    log.info('round collecting', { round: 1, clients: 3 });
    log.log('Mapped {/health/live, GET} route', 'RouterExplorer');
    log.warn('late update', 'AggregatorInbox');
  });
  const lines = c.text().trimEnd().split('\n');
  assert.equal(lines.length, 2, 'the framework start-up line is debug, below the default level');
  const [a, b] = lines.map((l) => JSON.parse(l) as LogRecord);
  assert.ok(a && b);
  assert.match(a.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.deepEqual(
    { level: a.level, service: a.service, msg: a.msg, round: a['round'], clients: a['clients'] },
    { level: 'info', service: 'aggregator', msg: 'round collecting', round: 1, clients: 3 },
  );
  assert.deepEqual([b.level, b.msg, b['context']], ['warn', 'late update', 'AggregatorInbox']);
  assert.equal(a['pid'], undefined, 'no pid/hostname: the record carries the service instead');
});

test('LOG_FORMAT=pretty: one readable line per record, LOG_LEVEL still honoured', () => {
  const c = capture();
  withEnv({ LOG_LEVEL: 'info', LOG_FORMAT: 'Pretty' }, () => {
    const log = new JsonLogger('aggregator', undefined, { out: c.out });
    log.info('round collecting', { round: 1 });
    log.info('started', { child: 'evaluator', pid: 42 });
    log.debug('not shown');
    log.log('AppModule dependencies initialized', 'InstanceLoader');
    log.warn('late update', 'AggregatorInbox');
  });
  const lines = c.text().trimEnd().split('\n');
  assert.equal(lines.length, 3, c.text());
  assert.match(lines[0]!, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: \[aggregator\] round collecting \{"round":1\}$/);
  // pino-pretty's convention: a record's pid (the launcher's lines carry a child's) stands after the level.
  assert.match(lines[1]!, /\] INFO \(42\): \[aggregator\] started \{"child":"evaluator"\}$/);
  assert.match(lines[2]!, /^\[\d\d:\d\d:\d\d\.\d{3}\] WARN: \[aggregator AggregatorInbox\] late update$/);
  assert.throws(
    () => withEnv({ LOG_FORMAT: 'text' }, () => new JsonLogger('x')),
    /LOG_FORMAT: "text" is not a format \(expected one of: json, pretty\)/,
  );
});

test('a sink gets records, whatever LOG_FORMAT says', () => {
  const out: LogRecord[] = [];
  withEnv({ LOG_FORMAT: 'pretty', LOG_LEVEL: undefined }, () => {
    new JsonLogger('trainer-a', (r) => out.push(r)).info('update published', { round: 0, clientId: 'add' });
  });
  assert.equal(out.length, 1);
  assert.deepEqual(
    [out[0]!.service, out[0]!.level, out[0]!.msg, out[0]!['clientId']],
    ['trainer-a', 'info', 'update published', 'add'],
  );
});
