/** libs/fedbiot: the FedBiOT algorithm, its baselines, the round coordinator and the standalone job. */
export * from './split.js';
export * from './aggregate.js';
export * from './sampling.js';
export * from './methods.js';
export * from './plan.js';
export * from './job-spec.js';
export * from './federation.js';
export * from './roles.js';
export * from './coordinator.js';
export { runJob, type JobOptions, type JobResult } from './job.js';
export * from './run-dir.js';
export { progress } from './progress.js';
export * from './report/results-json.js';
export { formatResultsTable } from './report/results-table.js';
export { writeReportHtml } from './report/report-html.js';
export { pretrainDemoModel, demoModelConfig } from './demo-model.js';
export * from './emulator-package.js';
