// #/train — Train runs (summaries from GET /api/train).

import { get } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtNum, timeCell, href, isNum, DASH } from '../util.js';

const lastLoss = (r) => (r.last_metrics && isNum(r.last_metrics.loss) ? r.last_metrics.loss : null);

function otherMetrics(r) {
  const m = r.last_metrics || {};
  const keys = Object.keys(m).filter((k) => k !== 'loss');
  if (!keys.length) return DASH;
  return keys
    .slice(0, 6)
    .map((k) => `<span class="res"><span class="res-k">${esc(k)}</span> ${esc(fmtNum(m[k]))}</span>`)
    .join(' ');
}

export function mount(el) {
  el.innerHTML = '<h1>Train runs</h1><div data-role="table" class="table-wrap"></div>';
  let now = Date.now() / 1000;
  const table = new Table(el.querySelector('[data-role=table]'), {
    className: 'train-table',
    empty: 'No Train runs have been published.',
    sort: { key: 'started', dir: -1 },
    rowClass: (r) => 'train-row' + (r.state === 'failed' ? ' failed' : ''),
    rowAttrs: (r) => ` data-run="${esc(r.name)}"`,
    columns: [
      { key: 'name', label: 'Run', cell: (r) => `<a href="${href('/train/' + encodeURIComponent(r.name))}"><strong>${esc(r.name)}</strong></a>` },
      { key: 'state', label: 'State', cell: (r) => badge(r.state) },
      { key: 'iterations', label: 'Iterations', cls: 'num', cell: (r) => esc(fmtNum(r.iterations)) },
      { key: 'samples_per_second', label: 'Samples/s', cls: 'num', cell: (r) => (isNum(r.samples_per_second) ? esc(fmtNum(r.samples_per_second)) : DASH) },
      { key: 'loss', label: 'Last loss', cls: 'num', value: lastLoss, cell: (r) => (lastLoss(r) === null ? DASH : esc(fmtNum(lastLoss(r)))) },
      { key: 'metrics', label: 'Other metrics', sortable: false, cls: 'wrap cfg-cell', cell: otherMetrics },
      {
        key: 'num_workers',
        label: 'Workers',
        cls: 'num',
        cell: (r) => esc(fmtNum(r.num_workers)) + (r.use_gpu ? ' <span class="tag">GPU</span>' : ''),
      },
      { key: 'failures', label: 'Failures', cls: 'num', cell: (r) => (r.failures ? `<span class="bad-text">${esc(r.failures)}</span>` : '0') },
      {
        key: 'started',
        label: 'Started / updated',
        cell: (r) => `${timeCell(r.started, now)}<div class="sub">${timeCell(r.updated, now)}</div>`,
      },
      { key: 'error', label: 'Error', cls: 'wrap msg narrow', cell: (r) => (r.error ? `<span class="bad-text">${esc(r.error)}</span>` : DASH) },
    ],
  });

  async function refresh() {
    const data = await get('/api/train');
    now = Date.now() / 1000;
    table.render(data.runs || []);
  }

  return { refresh };
}
