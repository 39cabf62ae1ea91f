import { pick, type Rng } from '../rng.js';
import { between, count, noun, people, twoPeople, type Noun, type Person } from './words.js';

/**
 * The demo clients' private tasks: arithmetic word problems with short numeric answers, checkable by exact match.
 * Each client has its own operation, operand range, phrasings, names and objects (distribution shift), so a model
 * fine-tuned on one client's data transfers only partly to another's.
 */
export const DEMO_TASK_IDS = ['add', 'sub', 'mul'] as const;
export type DemoTaskId = (typeof DEMO_TASK_IDS)[number];

/** A generated problem as an Alpaca record plus its operands (extra fields `category`, `a`, `b`). */
export interface DemoRecord {
  readonly instruction: string;
  readonly input: string;
  readonly output: string;
  readonly category: DemoTaskId;
  readonly a: number;
  readonly b: number;
}

interface Phrasing {
  readonly instruction: string;
  readonly input?: string;
}

interface TaskSpec {
  readonly operands: (rng: Rng) => [number, number];
  readonly answer: (a: number, b: number) => number;
  readonly phrasings: readonly ((a: number, b: number, p: [Person, Person], obj: Noun) => Phrasing)[];
  readonly people: readonly Person[];
  readonly objects: readonly Noun[];
}

const TASKS: Record<DemoTaskId, TaskSpec> = {
  add: {
    operands: (rng) => [between(rng, 2, 60), between(rng, 2, 39)],
    answer: (a, b) => a + b,
    people: [...people(['Ava', 'Chloe', 'Emma', 'Grace'], 'she'), ...people(['Ben', 'Dylan', 'Finn', 'Hugo'], 'he')],
    objects: [noun('marble'), noun('sticker'), noun('shell'), noun('stamp'), noun('acorn'), noun('feather')],
    phrasings: [
      (a, b, [x, y], o) => ({
        instruction: `${x.name} has ${count(a, o)}. ${y.name} gives ${x.object} ${b} more. How many ${o.many} does ${x.name} have now?`,
      }),
      (a, b, [x], o) => ({
        instruction: `${x.name} collected ${count(a, o)} on Monday and ${count(b, o)} on Tuesday. How many ${o.many} did ${x.subject} collect in total?`,
      }),
      (a, b, _p, o) => ({
        instruction: `A jar holds ${count(a, o)}. Then ${b} more are put in. How many ${o.many} are in the jar?`,
      }),
      (a, b, [x, y], o) => ({
        instruction: `${x.name} found ${count(a, o)} and ${y.name} found ${count(b, o)}. How many ${o.many} did they find together?`,
      }),
      (a, b) => ({ instruction: 'Add the two numbers.', input: `${a} and ${b}` }),
    ],
  },
  sub: {
    operands: (rng) => {
      const a = between(rng, 12, 99);
      return [a, between(rng, 1, a - 1)];
    },
    answer: (a, b) => a - b,
    people: [...people(['Isla', 'Maya', 'Nora', 'Priya'], 'she'), ...people(['Jonas', 'Liam', 'Omar', 'Ravi'], 'he')],
    objects: [
      noun('coin'),
      noun('cookie'),
      noun('balloon'),
      noun('ticket'),
      noun('candle'),
      noun('cherry', 'cherries'),
    ],
    phrasings: [
      (a, b, [x], o) => ({
        instruction: `${x.name} had ${count(a, o)} and gave away ${b}. How many ${o.many} are left?`,
      }),
      (a, b, _p, o) => ({
        instruction: `A stall had ${count(a, o)}. It sold ${b} of them. How many ${o.many} remain?`,
      }),
      (a, b, [x], o) => ({
        instruction: `${x.name} needs ${count(a, o)} and already has ${b}. How many more does ${x.subject} need?`,
      }),
      (a, b, [x, y], o) => ({
        instruction: `${x.name} owned ${count(a, o)}. ${y.name} borrowed ${b} of them. How many ${o.many} does ${x.name} still have?`,
      }),
      (a, b) => ({ instruction: 'Subtract the second number from the first.', input: `${a}, ${b}` }),
    ],
  },
  mul: {
    operands: (rng) => [between(rng, 2, 9), between(rng, 2, 9)],
    answer: (a, b) => a * b,
    people: [
      ...people(['Lucia', 'Sofia', 'Yara', 'Zoe'], 'she'),
      ...people(['Kenji', 'Mateo', 'Pavel', 'Tariq'], 'he'),
    ],
    objects: [noun('chair'), noun('pencil'), noun('egg'), noun('plant'), noun('book'), noun('cup')],
    phrasings: [
      (a, b, _p, o) => ({
        instruction: `There are ${a} rows with ${count(b, o)} in each row. How many ${o.many} are there?`,
      }),
      (a, b, [x], o) => ({
        instruction: `${x.name} buys ${a} packs of ${o.many}. Each pack has ${b}. How many ${o.many} does ${x.subject} buy?`,
      }),
      (a, b, _p, o) => ({
        instruction: `Each of ${a} tables has ${count(b, o)}. How many ${o.many} are there in all?`,
      }),
      (a, b, [x]) => ({
        instruction: `${x.name} reads ${b} pages a day for ${a} days. How many pages does ${x.subject} read?`,
      }),
      (a, b) => ({ instruction: 'Multiply the two numbers.', input: `${a} times ${b}` }),
    ],
  },
};

/** One random problem of a task. */
export function generateProblem(task: DemoTaskId, rng: Rng): DemoRecord {
  const spec = TASKS[task];
  const [a, b] = spec.operands(rng);
  const phrasing = pick(spec.phrasings, rng)(a, b, twoPeople(spec.people, rng), pick(spec.objects, rng));
  return {
    instruction: phrasing.instruction,
    input: phrasing.input ?? '',
    output: String(spec.answer(a, b)),
    category: task,
    a,
    b,
  };
}

/** The answer of a task for given operands. */
export function solve(task: DemoTaskId, a: number, b: number): number {
  return TASKS[task].answer(a, b);
}

/**
 * `n` problems whose (instruction, input) text is not in `exclude` nor repeated; the texts are added to `exclude`
 * so later splits stay disjoint. Throws if the task cannot produce that many distinct problems.
 */
export function generateUnique(task: DemoTaskId, n: number, rng: Rng, exclude: Set<string>): DemoRecord[] {
  const out: DemoRecord[] = [];
  let misses = 0;
  while (out.length < n) {
    const r = generateProblem(task, rng);
    const key = `${r.instruction}\u0000${r.input}`;
    if (exclude.has(key)) {
      if (++misses > 100 * n + 1000) throw new RangeError(`demo task ${task}: cannot generate ${n} distinct problems`);
      continue;
    }
    exclude.add(key);
    out.push(r);
  }
  return out;
}
