import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { z } from 'zod';
import { DatasetError, type DatasetIssue } from './errors.js';
import type { ChatMessage, Example, JsonValue, TextExample } from './types.js';

/** JSONL record formats; `auto` decides per line from the fields present (messages > instruction > prompt). */
export type RecordFormat = 'alpaca' | 'prompt-completion' | 'chat';

/** What every reader accepts besides its format options. */
export interface ReadCommonOptions {
  /**
   * The setting the path came from (e.g. `alignment.publicData`): named in the error when the file cannot be read,
   * so the user knows what to fix, not only which file is missing.
   */
  readonly setting?: string;
  /**
   * Lines that are read but suspicious: longer than `MAX_LINE_BYTES` (tokenization will cut them to maxLength) or
   * not valid UTF-8 (the bad bytes become U+FFFD). Default: console.warn as `file:line: reason`.
   */
  readonly onWarning?: (w: DatasetIssue) => void;
}

/** Lines longer than this are warned about (a 5 MB line is usually a broken export, and gets truncated anyway). */
export const MAX_LINE_BYTES = 1 << 20;

export interface JsonlReadOptions extends ReadCommonOptions {
  /** Force one format for every line, or detect per line. Default `auto`. */
  readonly format?: 'auto' | RecordFormat;
  /** Issues listed in the DatasetError message (all are kept in `error.issues`). Default 20. */
  readonly maxListedIssues?: number;
}

export interface TextReadOptions extends ReadCommonOptions {
  /** `paragraph`: one document per blank-line-separated block (default); `line`: one per non-blank line; `file`: one. */
  readonly split?: 'paragraph' | 'line' | 'file';
}

export const CHAT_ROLES = ['system', 'user', 'assistant', 'tool'] as const;

const nonEmpty = z.string().refine((s) => s.trim().length > 0, { message: 'must not be empty' });

const FORMAT_FIELDS: Record<RecordFormat, readonly string[]> = {
  alpaca: ['instruction', 'input', 'output'],
  'prompt-completion': ['prompt', 'completion'],
  chat: ['messages'],
};

const SCHEMAS = {
  alpaca: z.object({ instruction: nonEmpty, input: z.string().nullable().optional(), output: nonEmpty }),
  'prompt-completion': z.object({ prompt: nonEmpty, completion: nonEmpty }),
  chat: z.object({
    messages: z
      .array(z.object({ role: z.enum(CHAT_ROLES), content: z.string() }))
      .min(2, { message: 'needs a prompt turn and a final assistant turn' })
      .refine((m) => m.length < 2 || m[m.length - 1]?.role === 'assistant', {
        message: 'the last message must have role "assistant" (it is the trained response)',
      })
      .refine((m) => m.length < 2 || (m[m.length - 1]?.content.trim().length ?? 0) > 0, {
        message: 'the last (assistant) message must not be empty',
      }),
  }),
} as const;

/**
 * Parses JSONL text. Every malformed line (bad JSON, not an object, unknown format, missing field, wrong type,
 * empty response) is collected; if there is any, one DatasetError lists them all as `file:line: reason`.
 * Blank lines are skipped. `file` is only used to label sources and errors.
 */
export function parseJsonl(text: string, file: string, opts: JsonlReadOptions = {}): Example[] {
  const format = opts.format ?? 'auto';
  const examples: Example[] = [];
  const issues: DatasetIssue[] = [];
  const lines = stripBom(text).split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    if (raw.trim() === '') continue;
    const line = i + 1;
    const result = parseRecord(raw, format, { file, line });
    if (typeof result === 'string') issues.push({ file, line, reason: result });
    else examples.push(result);
  }
  if (issues.length > 0) {
    throw new DatasetError(`${file}: ${issues.length} malformed line(s)`, issues, opts.maxListedIssues);
  }
  if (examples.length === 0) throw new DatasetError(`${file}: no records (the file is empty)`, []);
  return examples;
}

/** Reads a JSONL file (UTF-8); see parseJsonl. Oversized and non-UTF-8 lines are warned about (onWarning). */
export async function readJsonl(path: string, opts: JsonlReadOptions = {}): Promise<Example[]> {
  return parseJsonl(await readUtf8(path, opts), path, opts);
}

/**
 * The file as text, with one warning per line that is longer than MAX_LINE_BYTES or not valid UTF-8 (decoded with
 * U+FFFD replacing bad bytes, as before, but no longer silently). A file that cannot be read is a DatasetError
 * naming the path, the setting it came from and the reason.
 */
export async function readUtf8(path: string, opts: ReadCommonOptions = {}): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new DatasetError(
      `${opts.setting ? `${opts.setting}: ` : ''}${path}: cannot read: ${why}${code === undefined ? '' : ` (${code})`}`,
      [],
    );
  }
  const warn = opts.onWarning ?? ((w: DatasetIssue) => console.warn(`${w.file}:${w.line}: ${w.reason}`));
  const strict = new TextDecoder('utf-8', { fatal: true });
  let valid = true;
  try {
    strict.decode(bytes);
  } catch {
    valid = false;
  }
  // Only scan line by line when something is off: a long line, or bytes that are not UTF-8.
  if (!valid || bytes.length > MAX_LINE_BYTES) {
    let start = 0;
    for (let line = 1; start <= bytes.length; line++) {
      let end = bytes.indexOf(0x0a, start);
      if (end < 0) end = bytes.length;
      const len = end - start;
      if (len > MAX_LINE_BYTES)
        warn({ file: path, line, reason: `line of ${len} bytes, over ${MAX_LINE_BYTES}; it will be cut to maxLength` });
      if (!valid) {
        try {
          strict.decode(bytes.subarray(start, end));
        } catch {
          warn({ file: path, line, reason: 'not valid UTF-8; the bad bytes were replaced by U+FFFD' });
        }
      }
      start = end + 1;
    }
  }
  return new TextDecoder('utf-8').decode(bytes);
}

/** Splits plain text into documents; sources point at each document's first line. */
export function parseText(text: string, file: string, opts: TextReadOptions = {}): TextExample[] {
  const split = opts.split ?? 'paragraph';
  const body = stripBom(text);
  const docs: TextExample[] = [];
  if (split === 'file') {
    if (body.trim() !== '') docs.push(textExample(body.trim(), file, 1 + leadingNewlines(body)));
  } else {
    const lines = body.split(/\r?\n/);
    let start = -1;
    let current: string[] = [];
    const flush = (): void => {
      if (current.length > 0) docs.push(textExample(current.join('\n').trim(), file, start + 1));
      current = [];
      start = -1;
    };
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i]!;
      if (l.trim() === '') {
        flush();
        continue;
      }
      if (start < 0) start = i;
      current.push(l);
      if (split === 'line') flush();
    }
    flush();
  }
  if (docs.length === 0) throw new DatasetError(`${file}: no text (the file is empty)`, []);
  return docs;
}

/** Reads a plain text file (UTF-8); see parseText. */
export async function readText(path: string, opts: TextReadOptions = {}): Promise<TextExample[]> {
  return parseText(await readUtf8(path, opts), path, opts);
}

export interface DatasetReadOptions extends JsonlReadOptions, TextReadOptions {}

/** Reads `.jsonl`/`.ndjson` as records and `.txt`/`.md` as plain text; other extensions are rejected by name. */
export async function readDataset(path: string, opts: DatasetReadOptions = {}): Promise<Example[]> {
  const ext = extname(path).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return readJsonl(path, opts);
  if (ext === '.txt' || ext === '.md') return readText(path, opts);
  throw new DatasetError(`${path}: unsupported dataset extension "${ext}" (expected .jsonl, .ndjson, .txt or .md)`, []);
}

function parseRecord(
  raw: string,
  format: 'auto' | RecordFormat,
  source: { file: string; line: number },
): Example | string {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (e) {
    return `invalid JSON (${(e as Error).message})`;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return `expected a JSON object, got ${describe(value)}`;
  }
  const record = value as Record<string, unknown>;
  const fmt = format === 'auto' ? detectFormat(record) : format;
  if (fmt === undefined) {
    return `unknown record format: expected fields instruction/output, prompt/completion or messages (got ${
      Object.keys(record).join(', ') || 'no fields'
    })`;
  }
  const parsed = SCHEMAS[fmt].safeParse(record);
  if (!parsed.success) {
    const reasons = parsed.error.issues.map((issue) => formatIssue(record, issue.path, issue.code, issue.message));
    return [...new Set(reasons)].join('; ');
  }
  const extra = extraFields(record, FORMAT_FIELDS[fmt]);
  switch (fmt) {
    case 'alpaca': {
      const r = parsed.data as z.infer<(typeof SCHEMAS)['alpaca']>;
      return { format: 'alpaca', instruction: r.instruction, input: r.input ?? '', output: r.output, extra, source };
    }
    case 'prompt-completion': {
      const r = parsed.data as z.infer<(typeof SCHEMAS)['prompt-completion']>;
      return { format: 'prompt-completion', prompt: r.prompt, completion: r.completion, extra, source };
    }
    case 'chat': {
      const r = parsed.data as z.infer<(typeof SCHEMAS)['chat']>;
      const messages: ChatMessage[] = r.messages.map((m) => ({ role: m.role, content: m.content }));
      return { format: 'chat', messages, extra, source };
    }
  }
}

function detectFormat(record: Record<string, unknown>): RecordFormat | undefined {
  if ('messages' in record) return 'chat';
  if ('instruction' in record || 'output' in record) return 'alpaca';
  if ('prompt' in record || 'completion' in record) return 'prompt-completion';
  return undefined;
}

/** Turns a zod issue into a reason that names the field and what was found there. */
function formatIssue(record: unknown, path: readonly PropertyKey[], code: string, message: string): string {
  const name = path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '');
  const field = name === '' ? 'record' : `field "${name}"`;
  const found = valueAt(record, path);
  if (code === 'invalid_type') {
    return found === undefined
      ? `missing ${field}`
      : `${field}: expected ${expectedOf(message)}, got ${describe(found)}`;
  }
  if (code === 'invalid_value') return `${field}: ${message.replace(/^Invalid option: /, '')}, got ${describe(found)}`;
  return `${field}: ${message}`;
}

function expectedOf(message: string): string {
  const m = /expected (\w+)/.exec(message);
  return m?.[1] ?? 'another type';
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = root;
  for (const key of path) {
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[key];
  }
  return v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'string') return v.trim() === '' ? 'an empty string' : `string ${JSON.stringify(truncate(v, 40))}`;
  if (typeof v === 'object') return 'object';
  return `${typeof v} ${String(v)}`;
}

function truncate(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n)}...`;
}

function extraFields(record: Record<string, unknown>, own: readonly string[]): Record<string, JsonValue> {
  const extra: Record<string, JsonValue> = {};
  for (const [k, v] of Object.entries(record)) if (!own.includes(k)) extra[k] = v as JsonValue;
  return extra;
}

function textExample(text: string, file: string, line: number): TextExample {
  return { format: 'text', text, extra: {}, source: { file, line } };
}

function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function leadingNewlines(text: string): number {
  const m = /^\s*/.exec(text);
  return m ? (m[0].match(/\n/g)?.length ?? 0) : 0;
}
