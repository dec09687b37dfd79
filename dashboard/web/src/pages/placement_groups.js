// #/placement-groups — placement groups with their bundles and where each bundle landed.

import { get } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtRes, shortId, matchFilter, DASH } from '../util.js';

export function mount(el) {
  el.innerHTML =
    '<h1>Placement groups</h1>' +
    '<div class="toolbar"><input type="search" class="filter" data-role="filter" placeholder="Filter by name, strategy or state" autocomplete="off">' +
    '<span class="muted" data-role="count"></span></div>' +
    '<div data-role="table" class="table-wrap"></div>';
  const filter = el.querySelector('[data-role=filter]');
  const count = el.querySelector('[data-role=count]');
  let groups = [];
  let hostnames = new Map();

  const bundlesHTML = (pg) => {
    const b = pg.bundles || [];
    if (!b.length) return DASH;
    return (
      '<table class="bundles"><tbody>' +
      b
        .map((x, i) => {
          const host = x.node_id ? hostnames.get(x.node_id) : null;
          const where = x.node_id
            ? `${host ? esc(host) + ' ' : ''}${shortId(x.node_id)}`
            : '<span class="muted">not placed</span>';
          return `<tr class="bundle" data-bundle-index="${i}"><td class="muted">#${i}</td><td>${fmtRes(x.resources)}</td><td>${where}</td></tr>`;
        })
        .join('') +
      '</tbody></table>'
    );
  };

  const table = new Table(el.querySelector('[data-role=table]'), {
    className: 'pg-table',
    empty: 'No placement groups.',
    rowClass: () => 'pg-row',
    rowAttrs: (pg) => ` data-pg-id="${esc(pg.id)}"`,
    columns: [
      { key: 'id', label: 'Id', cell: (pg) => shortId(pg.id, 12) },
      { key: 'name', label: 'Name', cell: (pg) => (pg.name ? esc(pg.name) : DASH) },
      { key: 'strategy', label: 'Strategy', cell: (pg) => `<code>${esc(pg.strategy)}</code>` },
      { key: 'state', label: 'State', cell: (pg) => badge(pg.state) },
      { key: 'count', label: 'Bundles', cls: 'num', value: (pg) => (pg.bundles || []).length, cell: (pg) => esc((pg.bundles || []).length) },
      { key: 'bundles', label: 'Bundle resources → node', sortable: false, cell: bundlesHTML },
    ],
  });

  function render() {
    const q = filter.value.trim();
    const shown = q ? groups.filter((g) => matchFilter(q, [g.name, g.strategy, g.state, g.id])) : groups;
    count.textContent = q ? `${shown.length} of ${groups.length}` : `${groups.length} placement groups`;
    table.render(shown);
  }
  filter.addEventListener('input', render);

  async function refresh() {
    const [data, nodes] = await Promise.all([get('/api/placement_groups'), get('/api/nodes').catch(() => null)]);
    if (nodes) hostnames = new Map((nodes.nodes || []).map((n) => [n.node_id, n.hostname]));
    groups = data.placement_groups || [];
    render();
  }

  return { refresh };
}
