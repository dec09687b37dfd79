// #/train/NAME — one Train run: summary, a line plot per numeric metric, workers, checkpoints.

import { get, seg } from '../api.js';
import { Table } from '../table.js';
import { LinePlot } from '../plot.js';
import { esc, badge, fmtNum, fmtTime, fmtDuration, kvHTML, setHTML, shortId, workerLogHref, valueHTML, isNum, DASH } from '../util.js';

const FIRST = ['loss', 'samples_per_second', 'throughput'];

/** Metric names in plotting order: loss, throughput, then as the run lists them, then the rest. */
function metricOrder(run, seen) {
  const names = [];
  const add = (n) => {
    if (seen.has(n) && !names.includes(n)) names.push(n);
  };
  FIRST.forEach(add);
  (run.metric_names || []).forEach(add);
  [...seen.keys()].sort().forEach(add);
  return names;
}

export function mount(el, ctx) {
  const name = ctx.params[0];
  el.innerHTML =
    `<div class="crumbs"><a href="#/train">Train</a> / ${esc(name)}</div>` +
    `<div class="title-row"><h1>${esc(name)}</h1><span data-role="state"></span></div>` +
    '<div class="bad-box" data-role="error" hidden></div>' +
    '<section class="panel" data-role="info"></section>' +
    '<section class="panel"><h2>Metrics over iterations</h2><p class="muted" data-role="no-metrics" hidden>No metrics reported yet.</p>' +
    '<div class="plots" data-role="plots"></div></section>' +
    '<div class="two-col"><section class="panel"><h2>Workers</h2><div data-role="workers" class="table-wrap"></div></section>' +
    '<section class="panel"><h2>Checkpoints</h2><div data-role="checkpoints" class="table-wrap scroll"></div></section></div>';
  const stateEl = el.querySelector('[data-role=state]');
  const errorEl = el.querySelector('[data-role=error]');
  const info = el.querySelector('[data-role=info]');
  const plotsEl = el.querySelector('[data-role=plots]');
  const noMetrics = el.querySelector('[data-role=no-metrics]');
  const plots = new Map(); // metric -> { div, plot }

  const workers = new Table(el.querySelector('[data-role=workers]'), {
    className: 'workers-table',
    empty: 'No workers.',
    sort: { key: 'rank', dir: 1 },
    rowClass: () => 'worker-row',
    rowAttrs: (w) => ` data-rank="${esc(w.rank)}"`,
    columns: [
      { key: 'rank', label: 'Rank', cls: 'num' },
      { key: 'node_id', label: 'Node', cell: (w) => shortId(w.node_id) },
      { key: 'pid', label: 'PID', cell: (w) => (w.pid ? `<a href="${workerLogHref(w.node_id, w.pid)}">${esc(w.pid)}</a>` : DASH) },
      { key: 'gpu_ids', label: 'GPUs', sortable: false, cell: (w) => ((w.gpu_ids || []).length ? esc(w.gpu_ids.join(', ')) : DASH) },
    ],
  });

  const checkpoints = new Table(el.querySelector('[data-role=checkpoints]'), {
    className: 'checkpoints-table',
    empty: 'No checkpoints.',
    sort: { key: 'iteration', dir: -1 },
    rowClass: () => 'checkpoint-row',
    columns: [
      { key: 'iteration', label: 'Iteration', cls: 'num' },
      { key: 'path', label: 'Path', cls: 'wrap', cell: (c) => `<code>${esc(c.path)}</code>` },
      {
        key: 'metrics',
        label: 'Metrics',
        sortable: false,
        cell: (c) =>
          Object.entries(c.metrics || {})
            .map(([k, v]) => `<span class="res"><span class="res-k">${esc(k)}</span> ${valueHTML(v)}</span>`)
            .join(' ') || DASH,
      },
    ],
  });

  function plotFor(metric) {
    let p = plots.get(metric);
    if (!p) {
      const div = document.createElement('div');
      div.className = 'plot';
      div.dataset.metric = metric;
      div.innerHTML = `<h3>${esc(metric)}</h3><div class="chart"></div>`;
      p = { div, plot: new LinePlot(div.querySelector('.chart'), { height: 190 }) };
      plots.set(metric, p);
    }
    return p;
  }

  async function refresh() {
    const run = await get(`/api/train/${seg(name)}`);
    if (!ctx.isActive()) return;
    setHTML(stateEl, badge(run.state));
    errorEl.hidden = !run.error;
    if (run.error) errorEl.textContent = run.error;
    const now = Date.now() / 1000;
    const lm = run.last_metrics || {};
    setHTML(
      info,
      kvHTML([
        ['Iterations', esc(fmtNum(run.iterations))],
        ['Samples/s', isNum(run.samples_per_second) ? esc(fmtNum(run.samples_per_second)) : DASH],
        ['Workers', esc(fmtNum(run.num_workers)) + (run.use_gpu ? ' (GPU)' : '')],
        ['Failures', esc(fmtNum(run.failures || 0))],
        ['Started', esc(fmtTime(run.started))],
        ['Updated', isNum(run.updated) ? `${esc(fmtTime(run.updated))} <span class="muted">(${esc(fmtDuration(now - run.updated))} ago)</span>` : DASH],
        ['Job', shortId(run.job_id, 16)],
        ['Storage', `<code>${esc(run.storage_path)}</code>`],
      ]) +
        '<h3>Last metrics</h3>' +
        (Object.keys(lm).length ? kvHTML(Object.entries(lm).map(([k, v]) => [k, valueHTML(v)])) : '<p class="muted">None reported yet.</p>')
    );

    // Collect each numeric metric's points over iterations.
    const seen = new Map();
    for (const h of run.history || []) {
      const m = h.metrics || {};
      for (const k of Object.keys(m)) {
        if (!isNum(m[k]) || !isNum(h.iteration)) continue;
        let pts = seen.get(k);
        if (!pts) seen.set(k, (pts = []));
        pts.push([h.iteration, m[k]]);
      }
    }
    const order = metricOrder(run, seen);
    for (const [k, p] of plots) {
      if (!seen.has(k)) {
        p.plot.destroy();
        p.div.remove();
        plots.delete(k);
      }
    }
    const waits = [];
    order.forEach((k, i) => {
      const p = plotFor(k);
      if (plotsEl.children[i] !== p.div) plotsEl.insertBefore(p.div, plotsEl.children[i] || null);
      waits.push(p.plot.set([{ name: k, color: i, points: seen.get(k) }]));
    });
    noMetrics.hidden = order.length > 0;

    workers.render(run.workers || []);
    checkpoints.render(run.checkpoints || []);
    await Promise.all(waits);
  }

  return {
    refresh,
    destroy() {
      for (const p of plots.values()) p.plot.destroy();
    },
  };
}
