import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CLIENT_PEOPLE,
  generateKnowledgeFederation,
  generateWorld,
  KNOWLEDGE_TASK_IDS,
  knowledgeCorpora,
  knowledgePretrainingTexts,
  knowledgePublicTexts,
} from '../src/index.js';

test('the world is fixed: the same people and facts for every job seed', () => {
  const w = generateWorld();
  assert.deepEqual(generateWorld(), w);
  assert.equal(new Set(w.map((p) => p.name)).size, w.length);
  const a = generateKnowledgeFederation({ seed: 0 });
  const b = generateKnowledgeFederation({ seed: 1 });
  assert.deepEqual(a.world, b.world);
  assert.notDeepEqual(a.clients[0]!.test, b.clients[0]!.test, 'the split depends on the seed');
});

test('each client asks about one relation; its test people are never in its training set', () => {
  const f = generateKnowledgeFederation({ seed: 3, trainPeople: 20, testPerClient: 50 });
  const world = new Map(f.world.map((p) => [p.name, p]));
  for (const [i, c] of f.clients.entries()) {
    assert.equal(c.id, KNOWLEDGE_TASK_IDS[i]);
    const trained = new Set(c.train.map((r) => r.person));
    assert.equal(trained.size, 20);
    assert.equal(c.train.length, 80);
    assert.equal(c.test.length, 50);
    for (const r of c.test) assert.ok(!trained.has(r.person), `${c.id}: ${r.person} is in train and test`);
    for (const r of [...c.train, ...c.test]) {
      const p = world.get(r.person)!;
      assert.equal(r.output, ' ' + (c.id === 'town' ? p.town : c.id === 'colour' ? p.colour : p.trade));
      assert.equal(r.category, c.id);
    }
  }
});

test('only the knowledge corpus holds the facts; clients ask only about people pretraining never asked about', () => {
  const c = knowledgeCorpora();
  const world = generateWorld();
  const pub = c.public.join('\n');
  const know = c.knowledge.join('\n');
  for (const p of [...world.slice(0, 25), ...world.slice(-5)]) {
    assert.ok(!pub.includes(p.name), `${p.name} in the public corpus`);
    assert.ok(know.includes(`${p.name} `), `${p.name} missing from the knowledge corpus`);
  }
  const f = generateKnowledgeFederation();
  const asked = new Set(f.clients.flatMap((x) => [...x.train, ...x.test].map((r) => r.person)));
  assert.ok([...asked].every((n) => world.findIndex((p) => p.name === n) < CLIENT_PEOPLE));
  for (const r of f.clients.flatMap((x) => x.test.slice(0, 10))) assert.ok(!know.includes(r.instruction));
  // Every question in pretraining is a drill about a drilled person: no client's person is ever asked about.
  const questions = know.match(/Q: [^?]*\?/g) ?? [];
  assert.ok(questions.length > 1000, `${questions.length} drill questions`);
  const drilled = new Set(world.slice(CLIENT_PEOPLE).map((p) => p.name));
  for (const q of questions.slice(0, 2000)) {
    const names = q
      .match(/\b[A-Z][a-z]+\b/g)
      ?.filter((w) => w !== 'Q' && w !== 'Which' && w !== 'What' && w !== 'Where');
    assert.ok(names?.length === 1 && drilled.has(names[0]!), `pretraining asks: ${q}`);
  }
});

test("public corpus kinds: general is the fact-free text, pretraining the owner's pretraining mix; others are refused", () => {
  const c = knowledgeCorpora();
  assert.deepEqual(knowledgePublicTexts(), c.public);
  assert.deepEqual(knowledgePublicTexts('general'), c.public);
  const pre = knowledgePublicTexts('pretraining');
  assert.deepEqual(pre, knowledgePretrainingTexts());
  assert.equal(pre.length, c.public.length + c.knowledge.length);
  assert.notDeepEqual(pre.slice(0, 20), c.public.slice(0, 20), 'interleaved, not appended');
  assert.throws(() => knowledgePublicTexts('facts' as 'general'), /"facts" is not one of general, pretraining/);
});
