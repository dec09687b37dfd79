// #/tune/NAME — one Tune experiment: the best trial, a plot of the metric for selected
// trials, and a sortable trial table (config and metric columns too).
//
// Built for ~1000 trials: the table is one HTML string per poll (replaced only when it
// changed), sorting happens in memory, and the plot redraws only when its data changed.

import { get, seg } from '../api.js';
import { Table } from '../table.js';
import { LinePlot, swatch, PALETTE_SIZE } from '../plot.js';
import { esc, badge, fmtNum, fmtTime, kvHTML, setHTML, shortId, valueHTML, matchFilter, flatten, isNum, DASH } from '../util.js';
import { countsHTML } from './tune.js';

const DEFAULT_SELECTED = 10;
const MAX_SERIES = 40;

function sortValue(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'number' || typeof v === 'string') return v;
  if (typeof v === 'boolean') return v ? 1 : 0;
  return JSON.stringify(v);
}

export function mount(el, ctx) {
  const name = ctx.params[0];
  el.innerHTML =
    `<div class="crumbs"><a href="#/tune">Tune</a> / ${esc(name)}</div>` +
    `<div class="title-row"><h1>${esc(name)}</h1><span data-role="state"></span></div>` +
    '<section class="panel" data-role="info"></section>' +
    '<div class="tune-top">' +
    '<section class="panel best-trial" data-role="best"></section>' +
    '<section class="panel plot-panel"><div class="panel-head"><h2 data-role="plot-title">Selected trials</h2>' +
    '<span class="buttons"><button class="btn small" data-action="best">Best 10</button>' +
    '<button class="btn small" data-action="clear">Clear</button></span></div>' +
    '<div class="plot" data-role="plot"><div class="chart"></div></div>' +
    '<div class="legend" data-role="legend"></div></section></div>' +
    '<section class="panel"><div class="toolbar"><h2>Trials</h2>' +
    '<input type="search" class="filter" data-role="filter" placeholder="Filter by id, status or config value" autocomplete="off">' +
    '<span class="muted" data-role="count"></span><span class="muted hint">Click a row to plot it; click a header to sort.</span></div>' +
    '<div class="table-wrap scroll tall" data-role="table"></div>' +
    '<div class="table-foot" data-role="foot" hidden><span data-role="shown"></span> ' +
    '<button class="btn small" data-action="show-all">Show all</button></div>' +
    '<style data-role="limit"></style></section>';

  const stateEl = el.querySelector('[data-role=state]');
  const info = el.querySelector('[data-role=info]');
  const bestEl = el.querySelector('[data-role=best]');
  const plotTitle = el.querySelector('[data-role=plot-title]');
  const plotDiv = el.querySelector('[data-role=plot]');
  const legend = el.querySelector('[data-role=legend]');
  const filter = el.querySelector('[data-role=filter]');
  const count = el.querySelector('[data-role=count]');
  const tableWrap = el.querySelector('[data-role=table]');
  const foot = el.querySelector('[data-role=foot]');
  const shownEl = el.querySelector('[data-role=shown]');
  const limitStyle = el.querySelector('[data-role=limit]');
  const plot = new LinePlot(plotDiv.querySelector('.chart'), { height: 260, emptyText: 'No trial selected, or no results yet.' });

  let exp = null;
  let trials = [];
  let byId = new Map();
  let metric = 'metric';
  let mode = 'min';
  let auto = true; // selection follows the current best trials until the user picks rows
  let selected = []; // trial ids, in selection order
  const colors = new Map(); // trial id -> palette index, kept while selected

  // Every row is in the DOM, but only the first `limit` are laid out (display:none for the
  // rest, raised as the table is scrolled): laying out 1000 rows of ~20 cells costs far more
  // than building and parsing them.
  const LIMIT_STEP = 200;
  let limit = LIMIT_STEP;
  let rowCount = 0;
  function applyLimit() {
    const hidden = rowCount > limit;
    const css = hidden ? `.page-tune-experiment .trial-table tbody tr:nth-child(n+${limit + 1}){display:none}` : '';
    if (limitStyle.textContent !== css) limitStyle.textContent = css;
    foot.hidden = !hidden;
    if (hidden) shownEl.textContent = `Showing ${limit} of ${rowCount} rows; scroll the table for more.`;
  }
  tableWrap.addEventListener('scroll', () => {
    if (rowCount > limit && tableWrap.scrollTop + tableWrap.clientHeight > tableWrap.scrollHeight - 300) {
      limit += LIMIT_STEP;
      applyLimit();
    }
  });

  const table = new Table(tableWrap, {
    className: 'trial-table',
    empty: 'No trials.',
    rowClass: (t) => 'trial-row' + (colors.has(t.trial_id) ? ' selected' : '') + (t.status === 'ERROR' ? ' failed' : ''),
    rowAttrs: (t) => ` data-trial-id="${esc(t.trial_id)}"`,
    columns: [],
  });

  function bestIds(n) {
    const dir = mode === 'max' ? -1 : 1;
    return trials
      .filter((t) => isNum(t.best))
      .sort((a, b) => (a.best - b.best) * dir)
      .slice(0, n)
      .map((t) => t.trial_id);
  }

  function setSelection(ids) {
    const keep = new Set(ids);
    for (const id of [...colors.keys()]) if (!keep.has(id)) colors.delete(id);
    for (const id of ids) {
      if (colors.has(id)) continue;
      const used = new Set(colors.values());
      let c = 0;
      while (used.has(c) && c < PALETTE_SIZE) c++;
      colors.set(id, c % PALETTE_SIZE);
    }
    selected = ids.slice();
  }

  function columns() {
    const cfgKeys = new Set();
    const lastKeys = new Set();
    for (const t of trials) {
      for (const k of Object.keys(t._cfg)) cfgKeys.add(k);
      for (const k of Object.keys(t.last || {})) lastKeys.add(k);
    }
    const cols = [
      {
        key: '_sel',
        label: '',
        title: 'plotted',
        value: (t) => (colors.has(t.trial_id) ? selected.indexOf(t.trial_id) : null),
        cell: (t) => (colors.has(t.trial_id) ? swatch(colors.get(t.trial_id)) : ''),
      },
      { key: 'trial_id', label: 'Trial', cell: (t) => `<code>${esc(t.trial_id)}</code>` },
      { key: 'status', label: 'Status', cell: (t) => badge(t.status) },
      { key: 'iterations', label: 'Iter', cls: 'num', cell: (t) => esc(fmtNum(t.iterations)) },
      { key: 'best', label: `best ${metric}`, cls: 'num', thCls: 'metric', cell: (t) => (isNum(t.best) ? esc(fmtNum(t.best)) : DASH) },
    ];
    const sortedLast = [...lastKeys].sort((a, b) => (a === metric ? -1 : b === metric ? 1 : a < b ? -1 : a > b ? 1 : 0));
    for (const k of sortedLast) {
      cols.push({
        key: 'last.' + k,
        label: k,
        title: `last reported ${k}`,
        cls: 'num',
        thCls: 'metric',
        value: (t) => sortValue((t.last || {})[k]),
        cell: (t) => valueHTML((t.last || {})[k]),
      });
    }
    for (const k of [...cfgKeys].sort()) {
      cols.push({
        key: 'config.' + k,
        label: k,
        title: `config: ${k}`,
        thCls: 'cfg',
        value: (t) => sortValue(t._cfg[k]),
        cell: (t) => valueHTML(t._cfg[k]),
      });
    }
    cols.push(
      { key: 'node_id', label: 'Node', cell: (t) => shortId(t.node_id) },
      { key: 'error', label: 'Error', cls: 'wrap msg', cell: (t) => (t.error ? `<span class="bad-text">${esc(t.error)}</span>` : '') }
    );
    return cols;
  }

  function renderTable() {
    const q = filter.value.trim();
    const shown = q
      ? trials.filter((t) => matchFilter(q, [t.trial_id, t.status, t.node_id, t.error, ...Object.values(t._cfg).map((v) => (typeof v === 'object' ? JSON.stringify(v) : v))]))
      : trials;
    count.textContent = q ? `${shown.length} of ${trials.length} trials` : `${trials.length} trials`;
    rowCount = shown.length;
    applyLimit();
    table.render(shown);
  }

  function renderPlot() {
    const ids = selected.filter((id) => byId.has(id));
    const plotted = ids.slice(0, MAX_SERIES);
    plotDiv.dataset.metric = metric;
    plotTitle.textContent =
      `${metric} over iterations — ${ids.length} trial${ids.length === 1 ? '' : 's'}` +
      (auto ? ` (best ${DEFAULT_SELECTED})` : '') +
      (ids.length > plotted.length ? `, first ${plotted.length} plotted` : '');
    setHTML(
      legend,
      plotted
        .map((id) => {
          const t = byId.get(id);
          return `<span class="legend-item" data-trial-id="${esc(id)}" title="click to remove">${swatch(colors.get(id))}${esc(id)}` +
            `${isNum(t.best) ? ' <span class="muted">' + esc(fmtNum(t.best)) + '</span>' : ''}</span>`;
        })
        .join('')
    );
    return plot.set(
      plotted.map((id) => ({
        name: id,
        color: colors.get(id),
        points: (byId.get(id).history || []).filter((p) => Array.isArray(p)),
      }))
    );
  }

  function toggle(id) {
    auto = false;
    const ids = selected.includes(id) ? selected.filter((x) => x !== id) : selected.concat([id]);
    setSelection(ids);
    renderTable();
    renderPlot();
  }

  el.addEventListener('click', (ev) => {
    const action = ev.target.closest('button[data-action]');
    if (action) {
      if (action.dataset.action === 'best') {
        auto = true;
        setSelection(bestIds(DEFAULT_SELECTED));
      } else if (action.dataset.action === 'clear') {
        auto = false;
        setSelection([]);
      } else if (action.dataset.action === 'show-all') {
        limit = Math.max(limit, rowCount);
        applyLimit();
        return;
      }
      renderTable();
      renderPlot();
      return;
    }
    if (ev.target.closest('a, input, button, th')) return;
    const item = ev.target.closest('.legend-item[data-trial-id]');
    if (item) {
      toggle(item.dataset.trialId);
      return;
    }
    const row = ev.target.closest('tr.trial-row');
    if (row && !window.getSelection().toString()) toggle(row.dataset.trialId);
  });
  filter.addEventListener('input', renderTable);

  function renderBest() {
    const b = exp.best;
    if (!b) {
      setHTML(bestEl, '<h2>Best trial</h2><p class="muted">No result yet.</p>');
      return;
    }
    const t = byId.get(b.trial_id);
    const cfg = flatten(b.config || (t && t.config) || {});
    setHTML(
      bestEl,
      `<h2>Best trial <code class="best-id" data-trial-id="${esc(b.trial_id)}">${esc(b.trial_id)}</code></h2>` +
        `<div class="best-value"><span class="muted">${esc(mode)} ${esc(metric)}</span> <strong>${esc(fmtNum(b.value, 6))}</strong></div>` +
        kvHTML(
          [
            ['Status', t ? badge(t.status) : DASH],
            ['Iterations', t ? esc(fmtNum(t.iterations)) : DASH],
          ].concat(Object.keys(cfg).sort().map((k) => [k, valueHTML(cfg[k])]))
        )
    );
  }

  async function refresh() {
    const x = await get(`/api/tune/${seg(name)}`);
    if (!ctx.isActive()) return;
    exp = x;
    metric = x.metric || 'metric';
    mode = x.mode === 'max' ? 'max' : 'min';
    trials = x.trials || [];
    for (const t of trials) t._cfg = flatten(t.config);
    byId = new Map(trials.map((t) => [t.trial_id, t]));
    if (!table.sort) table.sort = { key: 'best', dir: mode === 'max' ? -1 : 1 };

    setHTML(stateEl, badge(x.state));
    setHTML(
      info,
      kvHTML([
        ['Metric', `<code>${esc(metric)}</code> (${esc(mode)})`],
        ['Trials', countsHTML(x.counts)],
        ['Searcher', esc(x.searcher) || DASH],
        ['Scheduler', esc(x.scheduler) || DASH],
        ['Started', esc(fmtTime(x.started))],
        ['Updated', esc(fmtTime(x.updated))],
        ['Job', shortId(x.job_id, 16)],
        ['Path', `<code>${esc(x.path)}</code>`],
      ])
    );
    if (auto) setSelection(bestIds(DEFAULT_SELECTED));
    else setSelection(selected.filter((id) => byId.has(id)));
    renderBest();
    table.setColumns(columns());
    renderTable();
    await renderPlot();
  }

  return {
    refresh,
    destroy() {
      plot.destroy();
    },
  };
}
