// #/actors — every actor, a filter box, Kill and Stacks buttons, links to worker logs.

import { get, post, seg, qs } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtRes, fmtNum, shortId, matchFilter, workerLogHref, DASH } from '../util.js';

export function mount(el, ctx) {
  el.innerHTML =
    '<h1>Actors</h1>' +
    '<div class="toolbar"><input type="search" class="filter" data-role="filter" ' +
    'placeholder="Filter by class, name or state (words are ANDed)" autocomplete="off">' +
    '<span class="muted" data-role="count"></span></div>' +
    '<div class="stacks-panel panel" data-role="stacks" hidden></div>' +
    '<div data-role="table" class="table-wrap"></div>';
  const filter = el.querySelector('[data-role=filter]');
  const count = el.querySelector('[data-role=count]');
  const stacks = el.querySelector('[data-role=stacks]');
  if (ctx.query.get('filter')) filter.value = ctx.query.get('filter');

  let actors = [];
  let deadNotListed = 0;
  let hostnames = new Map();

  const nodeCell = (a) => {
    const h = hostnames.get(a.node_id);
    return h ? `<span title="${esc(a.node_id)}">${esc(h)}</span>` : shortId(a.node_id);
  };
  const alive = (a) => a.state !== 'DEAD';

  const table = new Table(el.querySelector('[data-role=table]'), {
    className: 'actors-table',
    empty: 'No actors.',
    rowClass: (a) => 'actor-row' + (a.state === 'DEAD' ? ' dead' : ''),
    rowAttrs: (a) => ` data-actor-id="${esc(a.actor_id)}" data-state="${esc(a.state)}" data-job-id="${esc(a.job_id)}"`,
    columns: [
      {
        key: 'class_name',
        label: 'Class / id',
        cell: (a) => `<strong>${esc(a.class_name)}</strong><div class="sub">${shortId(a.actor_id)}</div>`,
      },
      { key: 'name', label: 'Name', cell: (a) => (a.name ? esc(a.name) : DASH) + (a.detached ? ' <span class="tag">detached</span>' : '') },
      { key: 'state', label: 'State', cell: (a) => badge(a.state) },
      { key: 'node_id', label: 'Node', cell: nodeCell, value: (a) => hostnames.get(a.node_id) || a.node_id },
      {
        key: 'pid',
        label: 'PID',
        cell: (a) => (a.pid ? `<a href="${workerLogHref(a.node_id, a.pid)}" title="worker output">${esc(a.pid)}</a>` : DASH),
      },
      { key: 'resources', label: 'Resources', sortable: false, cls: 'wrap res-cell', cell: (a) => fmtRes(a.resources) },
      { key: 'calls_finished', label: 'Done', cls: 'num', value: (a) => (a.calls || {}).finished, cell: (a) => esc(fmtNum((a.calls || {}).finished)) },
      {
        key: 'calls_failed',
        label: 'Failed',
        cls: 'num',
        value: (a) => (a.calls || {}).failed,
        cell: (a) => {
          const f = (a.calls || {}).failed;
          return f ? `<span class="bad-text">${esc(fmtNum(f))}</span>` : esc(fmtNum(f));
        },
      },
      { key: 'calls_running', label: 'Running', cls: 'num', value: (a) => (a.calls || {}).running, cell: (a) => esc(fmtNum((a.calls || {}).running)) },
      { key: 'restarts', label: 'Restarts', cls: 'num', cell: (a) => esc(fmtNum(a.restarts)) },
      { key: 'death_cause', label: 'Death cause', cls: 'wrap msg narrow', cell: (a) => (a.death_cause ? esc(a.death_cause) : DASH) },
      {
        key: 'actions',
        label: '',
        sortable: false,
        cls: 'actions',
        cell: (a) =>
          `<button class="btn small" data-action="stacks" data-node="${esc(a.node_id)}" data-pid="${esc(a.pid)}"` +
          `${alive(a) && a.pid ? '' : ' disabled'}>Stacks</button>` +
          (a.pid ? `<a class="btn small" href="${workerLogHref(a.node_id, a.pid)}">Logs</a>` : '') +
          `<button class="btn small danger" data-action="kill" data-actor-id="${esc(a.actor_id)}"` +
          `${alive(a) ? '' : ' disabled'}>Kill</button>`,
      },
    ],
  });

  function render() {
    const q = filter.value.trim();
    const shown = q ? actors.filter((a) => matchFilter(q, [a.class_name, a.name, a.state])) : actors;
    const more = deadNotListed ? ` (and ${fmtNum(deadNotListed)} more dead actors not listed)` : '';
    count.textContent = (q ? `${shown.length} of ${actors.length} actors` : `${actors.length} actors`) + more;
    table.render(shown);
  }

  filter.addEventListener('input', render);

  async function showStacks(node, pid) {
    stacks.hidden = false;
    stacks.innerHTML = `<div class="panel-head"><h2>Stacks of pid ${esc(pid)}</h2><button class="btn small" data-action="close-stacks">Close</button></div><pre class="stacks">Loading…</pre>`;
    const pre = stacks.querySelector('pre');
    try {
      const r = await get('/api/stacks' + qs({ node, pid }));
      stacks.querySelector('h2').textContent = `Stacks of pid ${r.pid || pid} (${r.tool || '?'}) on ${hostnames.get(node) || node}`;
      pre.textContent = r.text || '(empty)';
    } catch (e) {
      pre.textContent = 'Could not get stacks: ' + e.message;
      pre.classList.add('bad-text');
    }
  }

  async function kill(id) {
    const a = actors.find((x) => x.actor_id === id);
    const what = a ? `${a.class_name}${a.name ? ' "' + a.name + '"' : ''} (${id})` : id;
    if (!window.confirm(`Kill actor ${what}? It will not be restarted.`)) return;
    try {
      const r = await post(`/api/actors/${seg(id)}/kill`, { no_restart: true });
      ctx.notify(`Killed actor ${r.killed || id}.`);
      ctx.refreshNow();
    } catch (e) {
      ctx.notify(`Kill failed: ${e.message}`, 'error');
    }
  }

  el.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || b.disabled) return;
    if (b.dataset.action === 'kill') kill(b.dataset.actorId);
    else if (b.dataset.action === 'stacks') showStacks(b.dataset.node, b.dataset.pid);
    else if (b.dataset.action === 'close-stacks') {
      stacks.hidden = true;
      stacks.textContent = '';
    }
  });

  async function refresh() {
    const [data, nodes] = await Promise.all([get('/api/actors'), get('/api/nodes').catch(() => null)]);
    if (nodes) hostnames = new Map((nodes.nodes || []).map((n) => [n.node_id, n.hostname]));
    actors = data.actors || [];
    deadNotListed = data.dead_not_listed || 0;
    render();
  }

  return { refresh };
}
