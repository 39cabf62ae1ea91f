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
