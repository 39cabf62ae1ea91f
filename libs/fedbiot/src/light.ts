/**
 * libs/fedbiot, light entry: what a process needs that does not train, without loading onnxruntime-node: the job
 * spec and its method table, the federation manifest, run folders, results and reports, the experiment harness,
 * logging and progress. The services launcher, the experiment runner and the services' environment and logger
 * import this. Everything here is also exported by index.ts.
 */
export * from './errors.js';
export * from './methods.js';
export * from './job-spec.js';
export * from './federation.js';
export { clientTrainingSeed } from './seeds.js';
export * from './run-dir.js';
export * from './report/results-json.js';
export { formatBytes, formatResultsTable } from './report/results-table.js';
export {
  METHOD_COLORS,
  renderLineChart,
  renderReportHtml,
  writeReportHtml,
  type ChartSpec,
  type Series,
} from './report/report-html.js';
export { LOG_LEVELS, logLevelFromEnv, logs, type LogLevel } from './log-level.js';
export { progress } from './progress.js';
export * from './experiment/grid.js';
export * from './experiment/summary.js';
