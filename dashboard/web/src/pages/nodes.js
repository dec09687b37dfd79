// #/nodes — one row per node with CPU, memory, object store, workers, resources and GPUs.

import { get } from '../api.js';
import { Table } from '../table.js';
import {
  esc, badge, barHTML, usedTotalBar, resLabel, fmtBytes, fmtPct, fmtNum, fmtResAmount, resKeys, shortId, href, isNum, DASH,
} from '../util.js';

/** One GPU as a `.gpu-bar`: utilisation and memory for a real GPU, "logical" with in_use otherwise. */
export function gpuHTML(g) {
  const idx = esc(g.index);
  if (g.logical) {
    const inUse = !!g.in_use;
    return (
      `<div class="gpu-bar logical${inUse ? ' in-use' : ''}" data-gpu-index="${idx}" data-logical="1"` +
      ` title="${esc(g.name || 'logical GPU')}">` +
      `<span class="gpu-name">GPU ${idx}</span><span class="gpu-kind">logical</span>` +
      `<span class="gpu-use ${inUse ? 'on' : 'off'}">${inUse ? 'in use' : 'free'}</span></div>`
    );
  }
  return (
    `<div class="gpu-bar" data-gpu-index="${idx}" data-logical="0" title="${esc(g.name || 'GPU')}">` +
    `<span class="gpu-name">GPU ${idx}</span><span class="gpu-model">${esc(g.name || '')}</span>` +
    `<div class="gpu-meters"><span class="meter-l">util</span>${barHTML(g.utilization, fmtPct(g.utilization), 'thin gpu-util')}` +
    `<span class="meter-l">mem</span>${usedTotalBar(g.memory_used_bytes, g.memory_total_bytes, fmtBytes, 'thin gpu-mem')}` +
    '</div></div>'
  );
}

function resourcesHTML(n) {
  const total = (n.resources && n.resources.total) || {};
  const avail = (n.resources && n.resources.available) || {};
  const keys = resKeys(total);
  if (!keys.length) return DASH;
  return (
    '<div class="res-bars">' +
    keys
      .map((k) => {
        const t = total[k];
        const used = isNum(avail[k]) ? t - avail[k] : null;
        return (
          `<div class="bar-row" data-resource="${esc(k)}">${resLabel(k)}` +
          usedTotalBar(used, t, (v) => fmtResAmount(k, v), 'thin') + '</div>'
        );
      })
      .join('') +
    '</div>'
  );
}

const ratio = (a, b) => (isNum(a) && isNum(b) && b > 0 ? a / b : null);

export function mount(el) {
  el.innerHTML =
    '<h1>Nodes</h1><div class="subtitle" data-role="summary"></div><div data-role="table" class="table-wrap"></div>';
  const summary = el.querySelector('[data-role=summary]');
  const table = new Table(el.querySelector('[data-role=table]'), {
    className: 'nodes-table',
    empty: 'No nodes.',
    rowClass: (n) => 'node-row' + (n.alive ? '' : ' dead'),
    rowAttrs: (n) => ` data-node-id="${esc(n.node_id)}"`,
    columns: [
      {
        key: 'hostname',
        label: 'Node',
        cell: (n) =>
          `<div class="node-name">${esc(n.hostname || '?')}${n.is_head ? ' <span class="tag">head</span>' : ''}</div>` +
          `<div class="sub">${shortId(n.node_id)} · <a href="${href('/logs', { node: n.node_id })}">logs</a></div>` +
          `<div class="sub"><code>${esc(n.address || '')}</code></div>`,
      },
      { key: 'alive', label: 'State', cell: (n) => badge(n.alive ? 'ALIVE' : 'DEAD'), value: (n) => (n.alive ? 1 : 0) },
      {
        key: 'cpu',
        label: 'CPU',
        cls: 'meter',
        value: (n) => (n.cpu ? n.cpu.utilization : null),
        cell: (n) => {
          const c = n.cpu || {};
          return barHTML(c.utilization, fmtPct(c.utilization), 'cpu-bar') +
            `<div class="sub">${isNum(c.cores) ? esc(fmtNum(c.cores)) + ' cores' : ''}</div>`;
        },
      },
      {
        key: 'memory',
        label: 'Memory',
        cls: 'meter',
        value: (n) => (n.memory ? ratio(n.memory.used_bytes, n.memory.total_bytes) : null),
        cell: (n) => usedTotalBar((n.memory || {}).used_bytes, (n.memory || {}).total_bytes, fmtBytes, 'mem-bar'),
      },
      {
        key: 'object_store',
        label: 'Object store',
        cls: 'meter',
        value: (n) => (n.object_store ? n.object_store.used_bytes : null),
        cell: (n) => {
          const o = n.object_store || {};
          return usedTotalBar(o.used_bytes, o.capacity_bytes, fmtBytes, 'store-bar') +
            `<div class="sub">${esc(fmtNum(o.objects || 0))} objects${o.evicted ? ' · ' + esc(fmtNum(o.evicted)) + ' evicted' : ''}</div>`;
        },
      },
      {
        key: 'workers',
        label: 'Workers',
        value: (n) => (n.workers ? n.workers.total : null),
        cell: (n) => {
          const w = n.workers || {};
          return `${esc(fmtNum(w.total))}<div class="sub">${esc(fmtNum(w.idle))} idle</div>`;
        },
      },
      { key: 'resources', label: 'Resources (used / total)', cls: 'meter wide', sortable: false, cell: resourcesHTML },
      {
        key: 'gpus',
        label: 'GPUs',
        cls: 'gpus',
        value: (n) => (n.gpus || []).length,
        cell: (n) => ((n.gpus || []).length ? n.gpus.map(gpuHTML).join('') : DASH),
      },
    ],
  });

  async function refresh() {
    const data = await get('/api/nodes');
    const list = data.nodes || [];
    const alive = list.filter((n) => n.alive).length;
    const gpus = list.reduce((s, n) => s + (n.gpus || []).length, 0);
    summary.textContent = `${alive} alive, ${list.length - alive} dead · ${gpus} GPUs`;
    table.render(list);
  }

  return { refresh };
}
