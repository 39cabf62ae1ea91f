/**
 * Exact match for numeric answers: the first number in the prediction against the reference's number.
 * A number may carry a sign, thousands commas and a decimal part ("-1,250.5"); comparison is by value, so
 * "12.0" matches "12". A reference without a number is compared as trimmed, case-folded text.
 */
const NUMBER = /(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|(?<![\w.])-?\d+(?:\.\d+)?/;

/** The first number in `text` as a JS number, or undefined. */
export function firstNumber(text: string): number | undefined {
  const m = NUMBER.exec(text);
  return m ? Number(m[0].replace(/,/g, '')) : undefined;
}

/** True when the prediction answers the reference (see module comment). */
export function exactMatch(prediction: string, reference: string): boolean {
  const ref = firstNumber(reference);
  if (ref === undefined) return normalizeText(prediction) === normalizeText(reference);
  return firstNumber(prediction.trim()) === ref;
}

function normalizeText(s: string): string {
  return s
    .trim()
    .toLowerCase()
    .replace(/[.!?]+$/, '')
    .trim();
}
