// #/ — the cluster at a glance (GET /api/cluster).

import { get } from '../api.js';
import { Table } from '../table.js';
import { esc, fmtNum, fmtBytes, fmtResAmount, resKeys, usedTotalBar, badge, setHTML, timeCell, shortId, fmtTime } from '../util.js';

function stat(key, label, value, cls = '') {
  return (
    `<div class="stat${cls ? ' ' + cls : ''}" data-stat="${esc(key)}">` +
    `<div class="stat-v">${esc(fmtNum(value))}</div><div class="stat-l">${esc(label)}</div></div>`
  );
}

function card(title, link, inner) {
  const h = link ? `<a href="${link}">${esc(title)}</a>` : esc(title);
  return `<section class="card"><h2>${h}</h2>${inner}</section>`;
}

export function mount(el) {
  el.innerHTML =
    '<h1>Overview</h1><div class="subtitle" data-role="subtitle"></div>' +
    '<div class="cards" data-role="cards"></div>' +
    '<section class="panel"><h2>Recent errors</h2><div data-role="errors"></div></section>';
  const subtitle = el.querySelector('[data-role=subtitle]');
  const cards = el.querySelector('[data-role=cards]');
  let now = 0;
  const errors = new Table(el.querySelector('[data-role=errors]'), {
    className: 'errors-table',
    empty: 'No recent errors.',
    sort: { key: 'time', dir: -1 },
    rowClass: () => 'error-row',
    columns: [
      { key: 'time', label: 'Time', cell: (r) => timeCell(r.time, now) },
      { key: 'kind', label: 'Kind', cell: (r) => badge(r.kind) },
      { key: 'what', label: 'What', cell: (r) => `<code>${esc(r.what)}</code>` },
      { key: 'message', label: 'Message', cls: 'wrap msg', cell: (r) => esc(r.message) },
      { key: 'node_id', label: 'Node', cell: (r) => shortId(r.node_id) },
    ],
  });

  async function refresh() {
    const c = await get('/api/cluster');
    now = c.time;
    setHTML(
      subtitle,
      `head <code>${esc(c.head_address || '?')}</code> · version ${esc(c.version || '?')} · as of ${esc(fmtTime(c.time))}`
    );

    const res = c.resources || {};
    const total = res.total || {};
    const used = res.used || {};
    const resBars = resKeys(total, used)
      .map((k) => {
        const fmt = (v) => fmtResAmount(k, v);
        return (
          `<div class="bar-row resource-bar" data-resource="${esc(k)}"><span class="bar-label">${esc(k)}</span>` +
          usedTotalBar(used[k], total[k], fmt) + '</div>'
        );
      })
      .join('');
    const os = c.object_store || {};
    const nodesC = c.nodes || {};
    const tasksC = c.tasks || {};
    const actorsC = c.actors || {};
    const jobsC = c.jobs || {};
    const actorStates = ['PENDING', 'ALIVE', 'RESTARTING', 'DEAD'];
    for (const k of Object.keys(actorsC)) if (!actorStates.includes(k)) actorStates.push(k);

    const html =
      card(
        'Nodes',
        '#/nodes',
        '<div class="stats">' + stat('nodes-alive', 'alive', nodesC.alive || 0, 'good') +
          stat('nodes-dead', 'dead', nodesC.dead || 0, nodesC.dead ? 'bad' : '') + '</div>'
      ) +
      card('Resources (used / total)', '#/nodes', resBars || '<p class="muted">No resources reported.</p>') +
      card(
        'Object store',
        null,
        `<div class="bar-row resource-bar" data-resource="object_store"><span class="bar-label">bytes</span>` +
          usedTotalBar(os.used_bytes, os.capacity_bytes, fmtBytes) + '</div>' +
          `<div class="stats">${stat('objects', 'objects', os.objects || 0)}</div>`
      ) +
      card(
        'Tasks',
        '#/tasks',
        '<div class="stats">' +
          stat('tasks-pending', 'pending', tasksC.pending || 0) +
          stat('tasks-running', 'running', tasksC.running || 0, 'run') +
          stat('tasks-finished', 'finished', tasksC.finished || 0) +
          stat('tasks-failed', 'failed', tasksC.failed || 0, tasksC.failed ? 'bad' : '') +
          '</div>'
      ) +
      card(
        'Actors',
        '#/actors',
        '<div class="stats">' +
          actorStates
            .map((s) => stat('actors-' + s, s.toLowerCase(), actorsC[s] || 0, s === 'DEAD' && actorsC[s] ? 'dim' : ''))
            .join('') +
          '</div>'
      ) +
      card(
        'Jobs',
        '#/jobs',
        '<div class="stats">' + stat('jobs-running', 'running', jobsC.running || 0, 'run') +
          stat('jobs-finished', 'finished', jobsC.finished || 0) + '</div>'
      );
    setHTML(cards, html);
    errors.render(c.recent_errors || []);
  }

  return { refresh };
}
