import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createRng, pick, shuffled, type Rng } from '../rng.js';
import { buildDemoTokenizer } from './bpe.js';
import { generatePublicCorpus } from './corpus.js';
import { between } from './words.js';

/**
 * The knowledge demo: a federation whose tasks need what only the full model knows.
 *
 * A fixed fictional world (WORLD_SEED, never the job's seed: the committed model was pretrained on it) of people,
 * each with a home town, a favourite colour and a trade. The model owner's pretraining corpus states these facts
 * (`knowledgeCorpus`); the public corpus the server aligns the emulator on is general text WITHOUT them. Each client
 * asks about one relation in question form (never seen in pretraining), and its test set asks about people it never
 * trained on, so a client can only score by pulling facts out of the pretrained weights: what layer dropout removes
 * from the emulator, and what plugging the adapter back into the full model (AdapFu) recovers.
 */
export const KNOWLEDGE_TASK_IDS = ['town', 'colour', 'trade'] as const;
export type KnowledgeTaskId = (typeof KNOWLEDGE_TASK_IDS)[number];

/** The world is the same for every job seed: the demo model memorised this one. */
export const WORLD_SEED = 20240617;
export const WORLD_PEOPLE = 360;
/**
 * The first CLIENT_PEOPLE people are the ones clients ask about; pretraining never shows them in question form. The
 * rest are "drilled": pretraining also asks about them in question-and-answer form (DRILLS), which is what teaches
 * a model to pull a stored fact out for a question at all. Without drills the pretrained model stated facts after
 * "<name> lives in" for 119 of 120 people, yet picked the right town after a question about them no more often than
 * guessing (11 of 120), and clients could not fine-tune that skill into a 2-layer adapter: every method stayed near
 * the 12.5 % of guessing. Allen-Zhu and Li (Physics of Language Models 3.1, 2023) report the same: extraction
 * generalises to people never asked about only when pretraining mixes question-answer data about other people.
 */
export const CLIENT_PEOPLE = 240;

export const TOWNS = ['Ardale', 'Brennick', 'Corvath', 'Dunmere', 'Elsford', 'Fenwick', 'Galloway', 'Harrowby'];
export const COLOURS = ['red', 'blue', 'green', 'yellow', 'white', 'black', 'purple', 'orange'];
export const TRADES = ['baker', 'farmer', 'sailor', 'miner', 'weaver', 'potter', 'smith', 'hunter'];

export interface WorldPerson {
  readonly name: string;
  readonly town: string;
  readonly colour: string;
  readonly trade: string;
}

const ONSETS = ['b', 'd', 'f', 'g', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'z', 'br', 'dr', 'kr', 'st', 'th'];
const VOWELS = ['a', 'e', 'i', 'o', 'u', 'ai', 'ou'];
const CODAS = ['', '', 'n', 'r', 'l', 's', 'k', 'th'];

function makeName(rng: Rng): string {
  const syl = (): string => pick(ONSETS, rng) + pick(VOWELS, rng);
  const s = syl() + syl() + pick(CODAS, rng);
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** The world: WORLD_PEOPLE people with distinct invented names and uniformly drawn attributes. */
export function generateWorld(n = WORLD_PEOPLE, seed = WORLD_SEED): WorldPerson[] {
  const rng = createRng(seed);
  const seen = new Set<string>();
  const out: WorldPerson[] = [];
  while (out.length < n) {
    const name = makeName(rng);
    if (seen.has(name)) continue;
    seen.add(name);
    out.push({ name, town: pick(TOWNS, rng), colour: pick(COLOURS, rng), trade: pick(TRADES, rng) });
  }
  return out;
}

/** Statements of a fact as pretraining text: several surface forms, so the model learns the fact, not one string. */
const STATEMENTS: Record<KnowledgeTaskId, readonly ((p: WorldPerson) => string)[]> = {
  town: [
    (p) => `${p.name} lives in ${p.town}.`,
    (p) => `The home of ${p.name} is in ${p.town}.`,
    (p) => `${p.name} was born in ${p.town} and still lives there.`,
    (p) => `People in ${p.town} know ${p.name} well.`,
  ],
  colour: [
    (p) => `${p.name} likes the colour ${p.colour}.`,
    (p) => `The favourite colour of ${p.name} is ${p.colour}.`,
    (p) => `${p.name} always wears something ${p.colour}.`,
    (p) => `${p.name} painted the door ${p.colour}, the colour ${p.name} loves.`,
  ],
  trade: [
    (p) => `${p.name} works as a ${p.trade}.`,
    (p) => `${p.name} is a ${p.trade} by trade.`,
    (p) => `Every day ${p.name} goes to work as a ${p.trade}.`,
    (p) => `The ${p.trade} ${p.name} is good at the job.`,
  ],
};

/** Pretraining's question-and-answer forms, for drilled people only; clients ask in other words (QUESTIONS). */
const DRILLS: Record<KnowledgeTaskId, readonly ((p: WorldPerson) => string)[]> = {
  town: [
    (p) => `Q: Which town does ${p.name} live in? A: ${p.town}.`,
    (p) => `Q: Where is the home of ${p.name}? A: ${p.town}.`,
  ],
  colour: [
    (p) => `Q: Which colour is the favourite of ${p.name}? A: ${p.colour}.`,
    (p) => `Q: What colour does ${p.name} love? A: ${p.colour}.`,
  ],
  trade: [
    (p) => `Q: What work does ${p.name} do? A: ${p.trade}.`,
    (p) => `Q: What is the trade of ${p.name}? A: ${p.trade}.`,
  ],
};

/** Paragraphs of 3-6 sentences drawn in order, each sentence made by `say` (deterministic from `rng`). */
function paragraphsOf<T>(items: readonly T[], say: (item: T) => string, rng: Rng): string[] {
  const paragraphs: string[] = [];
  for (let i = 0; i < items.length;) {
    const n = between(rng, 3, 6);
    paragraphs.push(
      items
        .slice(i, i + n)
        .map(say)
        .join(' '),
    );
    i += n;
  }
  return paragraphs;
}

/**
 * The owner's knowledge text (deterministic from `seed`): paragraphs of 3-6 fact statements about random people,
 * each fact stated about `mentionsPerFact` times in all, and paragraphs of question-answer drills about the
 * `drilled` people, each fact asked `drillsPerFact` times; the two kinds interleaved.
 */
export function generateKnowledgeCorpus(
  world: readonly WorldPerson[],
  mentionsPerFact: number,
  seed: number,
  drilled: readonly WorldPerson[] = [],
  drillsPerFact = 0,
): string[] {
  const rng = createRng(seed);
  const factsOf = (people: readonly WorldPerson[], times: number): { p: WorldPerson; rel: KnowledgeTaskId }[] => {
    const facts: { p: WorldPerson; rel: KnowledgeTaskId }[] = [];
    for (let m = 0; m < times; m++)
      for (const p of people) for (const rel of KNOWLEDGE_TASK_IDS) facts.push({ p, rel });
    return shuffled(facts, rng);
  };
  const statements = paragraphsOf(factsOf(world, mentionsPerFact), ({ p, rel }) => pick(STATEMENTS[rel], rng)(p), rng);
  if (drillsPerFact === 0) return statements;
  const drills = paragraphsOf(factsOf(drilled, drillsPerFact), ({ p, rel }) => pick(DRILLS[rel], rng)(p), rng);
  return shuffled([...statements, ...drills], rng);
}

/** Client questions: phrasings unlike any pretraining sentence, answered by one word. */
const QUESTIONS: Record<KnowledgeTaskId, readonly ((name: string) => string)[]> = {
  town: [
    (n) => `Where does ${n} live?`,
    (n) => `Which town is home to ${n}?`,
    (n) => `Name the town of ${n}.`,
    (n) => `In what town would you visit ${n}?`,
  ],
  colour: [
    (n) => `What is the favourite colour of ${n}?`,
    (n) => `Which colour does ${n} like best?`,
    (n) => `Name the colour ${n} loves.`,
    (n) => `What colour would ${n} choose?`,
  ],
  trade: [
    (n) => `What does ${n} do for a living?`,
    (n) => `What is the job of ${n}?`,
    (n) => `Name the trade of ${n}.`,
    (n) => `How does ${n} earn a living?`,
  ],
};

/** A client record (Alpaca) with the task and the person asked about. */
export interface KnowledgeRecord {
  readonly instruction: string;
  readonly input: string;
  readonly output: string;
  readonly category: KnowledgeTaskId;
  readonly person: string;
}

/**
 * The answer as the response text, with a leading space: byte-level BPE cuts "Fenwick" at the start of a line into
 * other pieces than " Fenwick" in prose, pieces pretraining never showed next to the fact, so without the space a
 * client would have to learn new spellings of every answer instead of recalling it. Exact match trims both sides.
 */
const answerOf = (p: WorldPerson, rel: KnowledgeTaskId): string =>
  ' ' + (rel === 'town' ? p.town : rel === 'colour' ? p.colour : p.trade);

/** The Alpaca record of question `q` about person `p`'s relation `rel` (clients' files and the 'task' public corpus). */
const questionRecord = (p: WorldPerson, rel: KnowledgeTaskId, q: (name: string) => string): KnowledgeRecord => ({
  instruction: q(p.name),
  input: '',
  output: answerOf(p, rel),
  category: rel,
  person: p.name,
});

export interface KnowledgeFederationOptions {
  /** Client splits (which people are train vs test) are a pure function of this seed; the world is not. Default 0. */
  readonly seed?: number;
  /** People per client whose questions are in its training set. Default 60. */
  readonly trainPeople?: number;
  /** Questions per training person (distinct phrasings). Default 4. */
  readonly phrasingsPerPerson?: number;
  /** Test questions per client, one per person not trained on. Default 180 (the rest of the CLIENT_PEOPLE). */
  readonly testPerClient?: number;
  /** The public corpus written beside the clients (KNOWLEDGE_PUBLIC_CORPORA). Default 'general'. */
  readonly publicCorpus?: KnowledgePublicCorpus;
  /** How the records are dealt to the three clients (KNOWLEDGE_CLIENT_SPLITS). Default 'by-relation'. */
  readonly clients?: KnowledgeClientSplit;
}

/**
 * How the knowledge demo's records are dealt to its three clients (job spec data.knowledgeClients):
 * - 'by-relation' (the default): client `town` asks only about towns, `colour` only about colours, `trade` only
 *   about trades; averaging their adapters averages three different lookups;
 * - 'iid': the same records (same people split per relation, same questions, same totals) dealt to clients
 *   `iid-0`, `iid-1`, `iid-2` by a seeded shuffle: within each relation the training people are dealt round-robin
 *   (a person's questions stay on one client) and so are the test questions, so every client holds an equal share
 *   of all three relations, in training and in test.
 */
export const KNOWLEDGE_CLIENT_SPLITS = ['by-relation', 'iid'] as const;
export type KnowledgeClientSplit = (typeof KNOWLEDGE_CLIENT_SPLITS)[number];
/** Client ids of the iid split, in order. */
export const KNOWLEDGE_IID_CLIENT_IDS = ['iid-0', 'iid-1', 'iid-2'] as const;

export interface KnowledgeFederation {
  readonly clients: readonly { id: string; train: KnowledgeRecord[]; test: KnowledgeRecord[] }[];
  readonly world: readonly WorldPerson[];
}

export function generateKnowledgeFederation(opts: KnowledgeFederationOptions = {}): KnowledgeFederation {
  const seed = opts.seed ?? 0;
  const nTrain = opts.trainPeople ?? 60;
  const perPerson = opts.phrasingsPerPerson ?? 4;
  const world = generateWorld();
  const asked = world.slice(0, CLIENT_PEOPLE);
  const nTest = opts.testPerClient ?? asked.length - nTrain;
  if (nTrain + nTest > asked.length || perPerson > 4 || nTrain < 1 || nTest < 1)
    throw new RangeError(
      `knowledge federation: trainPeople ${nTrain} + testPerClient ${nTest} must fit ${asked.length} people, phrasingsPerPerson <= 4`,
    );
  const clients = KNOWLEDGE_TASK_IDS.map((rel, c) => {
    const rng = createRng(seed * 1000 + 10 + c);
    const people = shuffled(asked, rng);
    const train = shuffled(
      people.slice(0, nTrain).flatMap((p) =>
        shuffled(QUESTIONS[rel], rng)
          .slice(0, perPerson)
          .map((q) => questionRecord(p, rel, q)),
      ),
      rng,
    );
    const test = people.slice(nTrain, nTrain + nTest).map((p) => questionRecord(p, rel, pick(QUESTIONS[rel], rng)));
    return { id: rel, train, test };
  });
  const split = opts.clients ?? 'by-relation';
  if (split === 'by-relation') return { clients, world };
  if (split === 'iid') return { clients: dealIid(clients, seed), world };
  throw new RangeError(
    `knowledge federation: clients ${JSON.stringify(split)} is not one of ${KNOWLEDGE_CLIENT_SPLITS.join(', ')}`,
  );
}

/**
 * The 'iid' split (KNOWLEDGE_CLIENT_SPLITS) of the by-relation clients' records: per relation, its training people
 * (each with all of their questions) and its test questions are shuffled by a seeded rng and dealt round-robin to
 * the iid clients; each client's training set is then shuffled. Same records, same totals; nothing regenerated.
 */
function dealIid(
  byRelation: readonly { id: KnowledgeTaskId; train: KnowledgeRecord[]; test: KnowledgeRecord[] }[],
  seed: number,
): KnowledgeFederation['clients'] {
  const rng = createRng(seed * 1000 + 20);
  const n = KNOWLEDGE_IID_CLIENT_IDS.length;
  const train: KnowledgeRecord[][] = KNOWLEDGE_IID_CLIENT_IDS.map(() => []);
  const test: KnowledgeRecord[][] = KNOWLEDGE_IID_CLIENT_IDS.map(() => []);
  for (const c of byRelation) {
    const people = [...new Set(c.train.map((r) => r.person))].toSorted();
    shuffled(people, rng).forEach((person, i) => train[i % n]!.push(...c.train.filter((r) => r.person === person)));
    shuffled(c.test, rng).forEach((r, i) => test[i % n]!.push(r));
  }
  return KNOWLEDGE_IID_CLIENT_IDS.map((id, i) => ({ id, train: shuffled(train[i]!, rng), test: test[i]! }));
}

/** Size of the general (fact-free) public corpus of the knowledge demo, in UTF-8 bytes. */
export const KNOWLEDGE_PUBLIC_BYTES = 600_000;
/** How often pretraining states each fact. */
export const MENTIONS_PER_FACT = 40;
/** How often pretraining asks each drilled person's fact in question form. */
export const DRILLS_PER_FACT = 10;
export const KNOWLEDGE_VOCAB = 1024;

/**
 * The owner's two corpora: `public` (general text, what the server aligns on by default) and `knowledge` (the
 * world's facts and drills, pretraining; alignment only with publicCorpus 'pretraining'). Deterministic; independent
 * of any job seed.
 */
export function knowledgeCorpora(): { public: string[]; knowledge: string[] } {
  return {
    public: generatePublicCorpus(createRng(WORLD_SEED + 2), { targetBytes: KNOWLEDGE_PUBLIC_BYTES }),
    knowledge: generateKnowledgeCorpus(
      generateWorld(),
      MENTIONS_PER_FACT,
      WORLD_SEED + 3,
      generateWorld().slice(CLIENT_PEOPLE),
      DRILLS_PER_FACT,
    ),
  };
}

/** Seed of the fixed shuffle that interleaves the two corpora in pretraining (models/demo-deep: pretrain seed 0). */
export const PRETRAINING_MIX_SEED = 0;

/**
 * The owner's pretraining text: the general and the knowledge corpus, paragraphs interleaved by a fixed shuffle so
 * every batch mixes both (what `npm run pretrain` trains models/demo-deep on, with its default seed).
 */
export function knowledgePretrainingTexts(seed = PRETRAINING_MIX_SEED): string[] {
  const c = knowledgeCorpora();
  return shuffled([...c.public, ...c.knowledge], createRng(seed));
}

/**
 * Which text the knowledge demo's server aligns the emulator on (job spec data.publicCorpus):
 * - 'general' (the default): the general corpus only, no facts and no drills: alignment cannot show the emulator
 *   what the dropped layers knew about the world;
 * - 'pretraining': the owner's own pretraining text (knowledgePretrainingTexts: general text plus every fact
 *   statement and drill, as pretraining saw them). Still no client data: the owner wrote it before any client
 *   joined; it is the closest this demo has to the paper's public data from the clients' domain.
 * - 'task': instruction records in the clients' own question forms (all four phrasings of each relation) about the
 *   120 drilled people, whom no client asks about (knowledgePublicQuestions): the clients' task format, answered
 *   from facts the owner holds, with no client's people in it. Written as public/corpus.jsonl and aligned on as the
 *   clients' examples look (the job's template).
 */
export const KNOWLEDGE_PUBLIC_CORPORA = ['general', 'pretraining', 'task'] as const;
export type KnowledgePublicCorpus = (typeof KNOWLEDGE_PUBLIC_CORPORA)[number];

/** The 'task' public corpus (KNOWLEDGE_PUBLIC_CORPORA): every client phrasing about every drilled person, shuffled. */
export function knowledgePublicQuestions(): KnowledgeRecord[] {
  const records: KnowledgeRecord[] = [];
  for (const p of generateWorld().slice(CLIENT_PEOPLE))
    for (const rel of KNOWLEDGE_TASK_IDS) for (const q of QUESTIONS[rel]) records.push(questionRecord(p, rel, q));
  return shuffled(records, createRng(WORLD_SEED + 4));
}

/** The paragraphs of the knowledge demo's text public corpus of this kind ('task' is records: knowledgePublicQuestions). */
export function knowledgePublicTexts(kind: Exclude<KnowledgePublicCorpus, 'task'> = 'general'): string[] {
  if (kind === 'general') return knowledgeCorpora().public;
  if (kind === 'pretraining') return knowledgePretrainingTexts();
  throw new RangeError(
    `knowledge demo public corpus: ${JSON.stringify(kind)} is not one of ${KNOWLEDGE_PUBLIC_CORPORA.join(', ')}`,
  );
}

/** The tokenizer of the knowledge demo model: trained on everything the owner pretrains on. */
export function buildKnowledgeTokenizer(): ReturnType<typeof buildDemoTokenizer> {
  const c = knowledgeCorpora();
  return buildDemoTokenizer([...c.public, ...c.knowledge], KNOWLEDGE_VOCAB);
}

const jsonl = (records: readonly object[]): string => records.map((r) => JSON.stringify(r) + '\n').join('');
const sha = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

/**
 * Writes the knowledge federation in the manifest layout the job reads (`data.federation: <dir>`):
 * clients/<id>/{train,test}.jsonl, public/corpus.txt (general text only, or the owner's pretraining text with
 * publicCorpus 'pretraining') or public/corpus.jsonl (publicCorpus 'task'), world.json (the facts, for people reading along; no role reads it), manifest.json.
 * Same options -> same bytes.
 */
export async function writeKnowledgeFederation(dir: string, opts: KnowledgeFederationOptions = {}): Promise<void> {
  const fed = generateKnowledgeFederation(opts);
  const entry = async (rel: string, content: string, count?: number): Promise<object> => {
    const path = join(dir, rel);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, content, 'utf8');
    return {
      path: rel,
      sha256: sha(content),
      bytes: Buffer.byteLength(content),
      ...(count === undefined ? {} : { count }),
    };
  };
  const clients: object[] = [];
  for (const c of fed.clients)
    clients.push({
      id: c.id,
      train: await entry(`clients/${c.id}/train.jsonl`, jsonl(c.train), c.train.length),
      test: await entry(`clients/${c.id}/test.jsonl`, jsonl(c.test), c.test.length),
    });
  const kind = opts.publicCorpus ?? 'general';
  let publicCorpus: object;
  if (kind === 'task') {
    const records = knowledgePublicQuestions();
    publicCorpus = await entry('public/corpus.jsonl', jsonl(records), records.length);
  } else {
    const pub = knowledgePublicTexts(kind);
    publicCorpus = await entry('public/corpus.txt', pub.join('\n\n') + '\n', pub.length);
  }
  await entry('world.json', JSON.stringify(fed.world, null, 1) + '\n');
  const manifest = {
    name: 'fedbiot-knowledge-federation',
    version: 1,
    seed: opts.seed ?? 0,
    options: opts,
    format: 'alpaca',
    labelField: 'category',
    clients,
    publicCorpus,
  };
  await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n', 'utf8');
}
