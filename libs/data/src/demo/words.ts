import { pick, type Rng } from '../rng.js';

const ONES = [
  'zero',
  'one',
  'two',
  'three',
  'four',
  'five',
  'six',
  'seven',
  'eight',
  'nine',
  'ten',
  'eleven',
  'twelve',
  'thirteen',
  'fourteen',
  'fifteen',
  'sixteen',
  'seventeen',
  'eighteen',
  'nineteen',
];
const TENS = ['', '', 'twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety'];

/** English words for an integer in [0, 9999]: 42 -> "forty-two", 305 -> "three hundred five". */
export function numberToWords(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 9999) throw new RangeError(`numberToWords: ${n} is outside [0, 9999]`);
  if (n < 20) return ONES[n]!;
  if (n < 100) return TENS[Math.floor(n / 10)] + (n % 10 ? `-${ONES[n % 10]}` : '');
  if (n < 1000) {
    const rest = n % 100;
    return `${ONES[Math.floor(n / 100)]} hundred` + (rest ? ` ${numberToWords(rest)}` : '');
  }
  const rest = n % 1000;
  return `${ONES[Math.floor(n / 1000)]} thousand` + (rest ? ` ${numberToWords(rest)}` : '');
}

/** A countable thing with its singular and plural forms. */
export interface Noun {
  readonly one: string;
  readonly many: string;
}

/** "1 apple", "3 apples". */
export function count(n: number | string, thing: Noun): string {
  return `${n} ${n === 1 || n === 'one' ? thing.one : thing.many}`;
}

export function noun(one: string, many = `${one}s`): Noun {
  return { one, many };
}

/** A person in a template, with the pronouns the sentence needs. */
export interface Person {
  readonly name: string;
  readonly subject: 'he' | 'she';
  readonly object: 'him' | 'her';
  readonly possessive: 'his' | 'her';
}

export function people(names: readonly string[], subject: 'he' | 'she'): Person[] {
  return names.map((name) =>
    subject === 'he'
      ? { name, subject, object: 'him', possessive: 'his' }
      : { name, subject, object: 'her', possessive: 'her' },
  );
}

/** Two different people. */
export function twoPeople(pool: readonly Person[], rng: Rng): [Person, Person] {
  const a = pick(pool, rng);
  let b = pick(pool, rng);
  while (b.name === a.name) b = pick(pool, rng);
  return [a, b];
}

export function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** Uniform integer in [lo, hi]. */
export function between(rng: Rng, lo: number, hi: number): number {
  return lo + rng.int(hi - lo + 1);
}
