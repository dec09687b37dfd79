// #/tasks — counts per function, the running tasks and the recent failures.

import { get } from '../api.js';
import { Table } from '../table.js';
import { esc, fmtNum, fmtDuration, shortId, timeCell, workerLogHref, matchFilter, DASH } from '../util.js';

const num = (key, label, extra = '') => ({
  key,
  label,
  cls: 'num',
  cell: (r) => {
    const v = r[key];
    return v && extra ? `<span class="${extra}">${esc(fmtNum(v))}</span>` : esc(fmtNum(v));
  },
});

export function mount(el) {
  el.innerHTML =
    '<div class="title-row"><h1>Tasks</h1>' +
    '<a class="btn small" href="/api/timeline" download="timeline.json" title="Chrome trace JSON; open in chrome://tracing or Perfetto">Download timeline</a></div>' +
    '<div class="subtitle" data-role="summary"></div>' +
    '<section class="panel"><h2>By function</h2>' +
    '<div class="toolbar"><input type="search" class="filter" data-role="filter" placeholder="Filter functions" autocomplete="off"></div>' +
    '<div data-role="functions" class="table-wrap"></div></section>' +
    '<section class="panel"><h2>Running <span class="muted" data-role="running-count"></span></h2><div data-role="running" class="table-wrap scroll"></div></section>' +
    '<section class="panel"><h2>Recent failures <span class="muted" data-role="fail-count"></span></h2><div data-role="failures" class="table-wrap scroll"></div></section>';
  const summary = el.querySelector('[data-role=summary]');
  const filter = el.querySelector('[data-role=filter]');
  const runningCount = el.querySelector('[data-role=running-count]');
  const failCount = el.querySelector('[data-role=fail-count]');
  let now = Date.now() / 1000;
  let data = null;

  const functions = new Table(el.querySelector('[data-role=functions]'), {
    className: 'functions-table',
    empty: 'No tasks yet.',
    sort: { key: 'name', dir: 1 },
    rowClass: () => 'function-row',
    rowAttrs: (f) => ` data-function="${esc(f.name)}"`,
    columns: [
      { key: 'name', label: 'Function', cell: (f) => `<code>${esc(f.name)}</code>` },
      num('pending', 'Pending'),
      num('running', 'Running', 'run-text'),
      num('finished', 'Finished'),
      num('failed', 'Failed', 'bad-text'),
    ],
  });

  const running = new Table(el.querySelector('[data-role=running]'), {
    className: 'running-table',
    empty: 'Nothing running.',
    sort: { key: 'started', dir: 1 },
    rowClass: () => 'task-row',
    rowAttrs: (t) => ` data-task-id="${esc(t.task_id)}"`,
    columns: [
      { key: 'task_id', label: 'Task', cell: (t) => shortId(t.task_id) },
      { key: 'name', label: 'Function', cell: (t) => `<code>${esc(t.name)}</code>` },
      { key: 'node_id', label: 'Node', cell: (t) => shortId(t.node_id) },
      { key: 'pid', label: 'PID', cell: (t) => (t.pid ? `<a href="${workerLogHref(t.node_id, t.pid)}">${esc(t.pid)}</a>` : DASH) },
      { key: 'started', label: 'Started', cell: (t) => timeCell(t.started, now) },
      { key: 'running_for', label: 'For', value: (t) => -t.started, cell: (t) => esc(fmtDuration(now - t.started)) },
      { key: 'actor_id', label: 'Actor', cell: (t) => shortId(t.actor_id) },
    ],
  });

  const failures = new Table(el.querySelector('[data-role=failures]'), {
    className: 'failures-table',
    empty: 'No failures.',
    sort: { key: 'time', dir: -1 },
    rowClass: () => 'failure-row',
    rowAttrs: (t) => ` data-task-id="${esc(t.task_id)}"`,
    columns: [
      { key: 'time', label: 'Time', cell: (t) => timeCell(t.time, now) },
      { key: 'name', label: 'Function', cell: (t) => `<code>${esc(t.name)}</code>` },
      { key: 'error_type', label: 'Error type', cell: (t) => `<span class="bad-text">${esc(t.error_type)}</span>` },
      { key: 'message', label: 'Message', cls: 'wrap msg', cell: (t) => `<span class="msg-text">${esc(t.message)}</span>` },
      { key: 'task_id', label: 'Task', cell: (t) => shortId(t.task_id) },
      { key: 'node_id', label: 'Node', cell: (t) => shortId(t.node_id) },
      { key: 'pid', label: 'PID', cell: (t) => (t.pid ? `<a href="${workerLogHref(t.node_id, t.pid)}">${esc(t.pid)}</a>` : DASH) },
    ],
  });

  function renderFunctions() {
    if (!data) return;
    const q = filter.value.trim();
    const list = data.functions || [];
    functions.render(q ? list.filter((f) => matchFilter(q, [f.name])) : list);
  }
  filter.addEventListener('input', renderFunctions);

  async function refresh() {
    data = await get('/api/tasks');
    now = Date.now() / 1000;
    const fns = data.functions || [];
    const sum = (k) => fns.reduce((s, f) => s + (f[k] || 0), 0);
    let s = `${fmtNum(sum('pending'))} pending · ${fmtNum(sum('running'))} running · ${fmtNum(sum('finished'))} finished · ${fmtNum(sum('failed'))} failed`;
    if (data.owners_asked !== undefined) {
      s += ` · asked ${fmtNum(data.owners_asked)} owners`;
      if (data.owners_silent) s += ` (${fmtNum(data.owners_silent)} did not answer: counts may be low)`;
    }
    summary.textContent = s;
    renderFunctions();
    const r = data.running || [];
    runningCount.textContent = `(${r.length}${r.length >= 200 ? ', the first 200' : ''})`;
    running.render(r);
    const f = data.recent_failures || [];
    failCount.textContent = `(${f.length})`;
    failures.render(f);
  }

  return { refresh };
}
