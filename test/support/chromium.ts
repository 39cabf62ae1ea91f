/**
 * Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
 * separated by NUL, commands on fd 3, replies and events on fd 4), so a test can keep one page open while it polls
 * and read its DOM or take screenshots, without a WebSocket client or a browser-automation dependency.
 * The binary: CHROMIUM_BIN, else the first of chromium, chromium-browser, google-chrome(-stable) on PATH (Debian's
 * `chromium` package gives /usr/bin/chromium). `npm test` installs it when missing (scripts/test-env.sh).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

const CANDIDATES = ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'];

/** CHROMIUM_BIN, else the first candidate found on PATH, else /usr/bin/chromium (named in the error when missing). */
export const chromiumBin: string =
  process.env['CHROMIUM_BIN'] ??
  CANDIDATES.flatMap((name) => (process.env['PATH'] ?? '').split(delimiter).map((dir) => join(dir, name))).find((p) =>
    existsSync(p),
  ) ??
  '/usr/bin/chromium';

interface Pending {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
  method: string;
}

export class HeadlessChromium {
  #next = 1;
  #pending = new Map<number, Pending>();
  #buffer = '';
  #stderr = '';

  private constructor(
    private readonly child: ChildProcess,
    private readonly profile: string,
  ) {
    const out = child.stdio[4] as Readable;
    out.setEncoding('utf8');
    out.on('data', (chunk: string) => this.#receive(chunk));
    child.stderr?.on('data', (d: Buffer) => void (this.#stderr = (this.#stderr + d.toString()).slice(-4000)));
    child.once('exit', (code, signal) => {
      for (const p of this.#pending.values())
        p.reject(new Error(`chromium exited (${code ?? signal}) during ${p.method}: ${this.#stderr}`));
      this.#pending.clear();
    });
  }

  /** Starts the browser with a fresh profile; throws naming the binary when it is missing. */
  static async launch(): Promise<HeadlessChromium> {
    if (!existsSync(chromiumBin))
      throw new Error(
        `chromium not found at ${chromiumBin} (set CHROMIUM_BIN, or run scripts/test-env.sh up, which npm test runs)`,
      );
    const profile = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
    const child = spawn(
      chromiumBin,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--no-first-run',
        '--hide-scrollbars',
        `--user-data-dir=${profile}`,
        '--remote-debugging-pipe',
        'about:blank',
      ],
      { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] },
    );
    const browser = new HeadlessChromium(child, profile);
    await browser.send('Browser.getVersion');
    return browser;
  }

  #receive(chunk: string): void {
    this.#buffer += chunk;
    let end: number;
    while ((end = this.#buffer.indexOf('\0')) >= 0) {
      const msg = JSON.parse(this.#buffer.slice(0, end)) as {
        id?: number;
        result?: Record<string, unknown>;
        error?: { message: string };
      };
      this.#buffer = this.#buffer.slice(end + 1);
      const p = msg.id === undefined ? undefined : this.#pending.get(msg.id);
      if (!p) continue; // events are not needed here
      this.#pending.delete(msg.id!);
      if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
      else p.resolve(msg.result ?? {});
    }
  }

  /** One DevTools command; `sessionId` addresses a page attached with {@link open}. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, method });
      (this.child.stdio[3] as Writable).write(JSON.stringify({ id, method, params, sessionId }) + '\0');
    });
  }

  /** Opens `url` in a new page of the given viewport size (CSS pixels); resolves once its load event fired. */
  async open(url: string, width = 1100, height = 1200): Promise<Page> {
    const { targetId } = (await this.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string };
    const { sessionId } = (await this.send('Target.attachToTarget', { targetId, flatten: true })) as {
      sessionId: string;
    };
    const page = new Page(this, sessionId);
    await this.send(
      'Emulation.setDeviceMetricsOverride',
      { width, height, deviceScaleFactor: 1, mobile: false },
      sessionId,
    );
    await this.send('Page.enable', {}, sessionId);
    await this.send('Page.navigate', { url }, sessionId);
    // Page.navigate answers once the navigation starts; the page's scripts may not have run yet.
    await page.waitFor(
      `document.readyState === 'complete' && location.href === ${JSON.stringify(new URL(url).href)}`,
      `${url} to load`,
    );
    return page;
  }

  async close(): Promise<void> {
    const exited = new Promise<void>((r) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) r();
      else this.child.once('exit', () => r());
    });
    await this.send('Browser.close').catch(() => {});
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    rmSync(this.profile, { recursive: true, force: true });
  }
}

export class Page {
  constructor(
    private readonly browser: HeadlessChromium,
    private readonly sessionId: string,
  ) {}

  /** Evaluates a JavaScript expression in the page; returns its JSON value. Throws on a page-side exception. */
  async evaluate<T>(expression: string): Promise<T> {
    const r = (await this.browser.send(
      'Runtime.evaluate',
      { expression, returnByValue: true, awaitPromise: true },
      this.sessionId,
    )) as { result: { value?: T }; exceptionDetails?: { text: string; exception?: { description?: string } } };
    if (r.exceptionDetails)
      throw new Error(`page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return r.result.value as T;
  }

  /** Polls `expression` every 100 ms until it is truthy; returns that value. */
  async waitFor<T>(expression: string, what: string, timeoutMs = 15_000): Promise<T> {
    const t0 = Date.now();
    for (;;) {
      const v = await this.evaluate<T>(expression);
      if (v) return v;
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The serialized DOM, as `chromium --dump-dom` prints it. */
  html(): Promise<string> {
    return this.evaluate<string>('document.documentElement.outerHTML');
  }

  /** A PNG of the whole page. */
  async screenshot(): Promise<Buffer> {
    const { data } = (await this.browser.send(
      'Page.captureScreenshot',
      { format: 'png', captureBeyondViewport: true },
      this.sessionId,
    )) as { data: string };
    return Buffer.from(data, 'base64');
  }
}
