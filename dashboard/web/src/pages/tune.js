// #/tune — Tune experiments (summaries from GET /api/tune).

import { get } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtNum, timeCell, href, configHTML, isNum, DASH } from '../util.js';

export const TRIAL_STATES = ['PENDING', 'RUNNING', 'PAUSED', 'TERMINATED', 'ERROR'];

/** Trial counts as small badges, e.g. "2 RUNNING 10 TERMINATED". */
export function countsHTML(counts) {
  if (!counts) return DASH;
  const keys = TRIAL_STATES.filter((k) => counts[k]).concat(Object.keys(counts).filter((k) => !TRIAL_STATES.includes(k) && counts[k]));
  if (!keys.length) return '<span class="muted">no trials</span>';
  return keys.map((k) => `<span class="count" data-state="${esc(k)}">${esc(fmtNum(counts[k]))} ${badge(k)}</span>`).join(' ');
}

const total = (c) => Object.values(c || {}).reduce((s, v) => s + (isNum(v) ? v : 0), 0);

export function mount(el) {
  el.innerHTML = '<h1>Tune experiments</h1><div data-role="table" class="table-wrap"></div>';
  let now = Date.now() / 1000;
  const table = new Table(el.querySelector('[data-role=table]'), {
    className: 'tune-table',
    empty: 'No Tune experiments have been published.',
    sort: { key: 'started', dir: -1 },
    rowClass: () => 'experiment-row',
    rowAttrs: (x) => ` data-experiment="${esc(x.name)}"`,
    columns: [
      { key: 'name', label: 'Experiment', cell: (x) => `<a href="${href('/tune/' + encodeURIComponent(x.name))}"><strong>${esc(x.name)}</strong></a>` },
      { key: 'state', label: 'State', cell: (x) => badge(x.state) },
      { key: 'metric', label: 'Metric', cell: (x) => `<code>${esc(x.metric)}</code> <span class="muted">${esc(x.mode)}</span>` },
      { key: 'trials', label: 'Trials', cls: 'num', value: (x) => total(x.counts), cell: (x) => esc(fmtNum(total(x.counts))) },
      { key: 'counts', label: 'By status', sortable: false, cls: 'wrap counts-cell', cell: (x) => countsHTML(x.counts) },
      { key: 'best', label: 'Best', cls: 'num', value: (x) => (x.best ? x.best.value : null), cell: (x) => (x.best ? esc(fmtNum(x.best.value)) : DASH) },
      { key: 'best_trial', label: 'Best trial', value: (x) => (x.best ? x.best.trial_id : null), cell: (x) => (x.best ? `<code>${esc(x.best.trial_id)}</code>` : DASH) },
      { key: 'best_config', label: 'Best config', sortable: false, cls: 'wrap cfg-cell', cell: (x) => (x.best ? configHTML(x.best.config) : DASH) },
      {
        key: 'searcher',
        label: 'Searcher / scheduler',
        cell: (x) => `${esc(x.searcher) || DASH}<div class="sub">${esc(x.scheduler) || ''}</div>`,
      },
      {
        key: 'started',
        label: 'Started / updated',
        cell: (x) => `${timeCell(x.started, now)}<div class="sub">${timeCell(x.updated, now)}</div>`,
      },
    ],
  });

  async function refresh() {
    const data = await get('/api/tune');
    now = Date.now() / 1000;
    table.render(data.experiments || []);
  }

  return { refresh };
}
