/** GET /dashboard (a page that polls) and GET /dashboard/data (the evaluator's progress as JSON). */
import { Controller, Get, Header, Inject } from '@nestjs/common';
import { ROLE } from '../common/http.js';
import type { Evaluator, Progress } from './evaluator.js';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>FedBiOT job</title>
<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head>
<body><h1 id="title">FedBiOT job</h1><p id="progress">waiting for data...</p><h2>Evaluation</h2><table id="evals"></table><h2>Training loss</h2><table id="train"></table>
<script>
async function tick(){
  const p = await (await fetch('dashboard/data')).json();
  document.getElementById('title').textContent = 'FedBiOT job ' + p.jobId;
  const done = p.evals.length ? Math.max(...p.evals.map(e => e.round)) : 0;
  document.getElementById('progress').textContent = 'rounds evaluated: ' + done + ' / ' + p.totalRounds;
  document.getElementById('evals').innerHTML = '<tr><th>round</th><th>method</th><th>client</th><th>test loss</th><th>accuracy</th></tr>' +
    p.evals.flatMap(e => e.rows.map(r => '<tr><td>' + e.round + '</td><td>' + r.method + '</td><td>' + r.client + '</td><td>' + r.testLoss.toFixed(4) + '</td><td>' + (100 * r.accuracy).toFixed(1) + '%</td></tr>')).join('');
  document.getElementById('train').innerHTML = '<tr><th>round</th><th>client</th><th>loss</th><th>tokens</th></tr>' +
    p.train.map(t => '<tr><td>' + t.round + '</td><td>' + t.client + '</td><td>' + t.loss.toFixed(4) + '</td><td>' + t.tokens + '</td></tr>').join('');
}
tick(); setInterval(tick, 2000);
</script></body></html>`;

@Controller('dashboard')
export class DashboardController {
  constructor(@Inject(ROLE) private readonly role: Evaluator) {}

  @Get()
  @Header('Content-Type', 'text/html; charset=utf-8')
  page(): string {
    return PAGE;
  }

  @Get('data')
  data(): Progress {
    return this.role.progress();
  }
}
