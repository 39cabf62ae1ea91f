/** `npm run bench -- <suite> [options]`: engine | model | perf | profile | gpu-check | messaging | transfer | package | privacy | soak | scale. Each suite prints a table and writes bench/results/<suite>.json. */
const suites: Record<string, () => Promise<{ main: (args: string[]) => Promise<void> }>> = {
  engine: () => import('./engine.js'),
  model: () => import('./model.js'),
  perf: () => import('./perf.js'),
  profile: () => import('./profile.js'),
  'gpu-check': () => import('./gpu-check.js'),
  messaging: () => import('./messaging.js'),
  transfer: () => import('./transfer.js'),
  package: () => import('./package.js'),
  privacy: () => import('./privacy.js'),
  soak: () => import('./soak.js'),
  scale: () => import('./scale.js'),
};
const [name, ...args] = process.argv.slice(2);
const load = name ? suites[name] : undefined;
if (!load) {
  console.error(`usage: npm run bench -- <${Object.keys(suites).join('|')}> [--provider cpu|webgpu] [--threads N] ...`);
  process.exit(2);
}
await (await load()).main(args);
