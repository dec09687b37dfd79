// #/logs?node=ID&file=NAME — pick a node and one of its log files; show the last lines and
// optionally follow the file (poll offset=next_offset every second, append).

import { get, qs } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtBytes, timeCell, href, setHTML, isNum } from '../util.js';
import { LogView } from '../logview.js';

const FOLLOW_MS = 1000;
const POLL_MS = 2000;

export function mount(el, ctx) {
  let node = ctx.query.get('node') || '';
  let file = ctx.query.get('file') || (ctx.query.get('worker') ? `worker-${ctx.query.get('worker')}.out` : '');
  let follow = ctx.query.get('follow') === '1';
  let tail = Number(ctx.query.get('tail')) > 0 ? Math.floor(Number(ctx.query.get('tail'))) : 1000;

  el.innerHTML =
    '<h1>Logs</h1>' +
    '<div class="toolbar log-toolbar">' +
    '<label>Node <select data-role="node"></select></label>' +
    '<label>File <select data-role="file"></select></label>' +
    `<label>Lines <input type="number" min="1" step="100" value="${tail}" data-role="tail" class="narrow"></label>` +
    '<button class="btn small" data-role="reload">Reload</button>' +
    `<label class="check"><input type="checkbox" data-role="follow"${follow ? ' checked' : ''}> Follow</label>` +
    '<label class="check"><input type="checkbox" data-role="autoscroll" checked> Scroll to end</label>' +
    '<span class="muted" data-role="file-info"></span></div>' +
    '<section class="panel" data-role="files-panel"><h2>Files</h2><div data-role="files" class="table-wrap"></div></section>' +
    '<pre class="log log-text" data-role="log" hidden></pre>';

  const nodeSel = el.querySelector('[data-role=node]');
  const fileSel = el.querySelector('[data-role=file]');
  const tailInput = el.querySelector('[data-role=tail]');
  const followBox = el.querySelector('[data-role=follow]');
  const fileInfo = el.querySelector('[data-role=file-info]');
  const filesPanel = el.querySelector('[data-role=files-panel]');
  const pre = el.querySelector('[data-role=log]');
  const log = new LogView(pre, el.querySelector('[data-role=autoscroll]'));

  let loaded = false; // the tail of the current file has been read
  let nextOffset = 0;
  let size = null;

  const go = (q) => {
    window.location.hash = href('/logs', q);
  };
  nodeSel.addEventListener('change', () => go({ node: nodeSel.value }));
  fileSel.addEventListener('change', () => go({ node, file: fileSel.value, follow: follow ? '1' : '' }));
  followBox.addEventListener('change', () => {
    follow = followBox.checked;
    if (follow) ctx.refreshNow();
  });
  el.querySelector('[data-role=reload]').addEventListener('click', () => {
    const n = Math.floor(Number(tailInput.value));
    if (n > 0) tail = n;
    loaded = false;
    ctx.refreshNow();
  });

  const files = new Table(el.querySelector('[data-role=files]'), {
    className: 'log-files',
    empty: 'No log files on this node.',
    sort: { key: 'name', dir: 1 },
    rowClass: () => 'log-file-row',
    rowAttrs: (f) => ` data-file="${esc(f.name)}"`,
    columns: [
      { key: 'name', label: 'File', cell: (f) => `<a href="${href('/logs', { node, file: f.name })}"><code>${esc(f.name)}</code></a>` },
      { key: 'kind', label: 'Kind', cell: (f) => badge(f.kind) },
      { key: 'pid', label: 'PID', cls: 'num', cell: (f) => (f.pid ? esc(f.pid) : '') },
      { key: 'size', label: 'Size', cls: 'num', cell: (f) => esc(fmtBytes(f.size)) },
      { key: 'modified', label: 'Modified', cell: (f) => timeCell(f.modified) },
    ],
  });

  function renderNodes(list) {
    let opts = list
      .map((n) => {
        const label = `${n.hostname || '?'} (${String(n.node_id).slice(0, 8)})${n.is_head ? ' head' : ''}${n.alive ? '' : ' DEAD'}`;
        return `<option value="${esc(n.node_id)}"${n.node_id === node ? ' selected' : ''}>${esc(label)}</option>`;
      })
      .join('');
    if (node && !list.some((n) => n.node_id === node)) {
      opts = `<option value="${esc(node)}" selected>${esc(node)} (unknown)</option>` + opts;
    }
    setHTML(nodeSel, opts);
    nodeSel.value = node;
  }

  function renderFiles(list) {
    const sorted = list.slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    let opts = `<option value=""${file ? '' : ' selected'}>— choose a file —</option>` +
      sorted.map((f) => `<option value="${esc(f.name)}"${f.name === file ? ' selected' : ''}>${esc(f.name)}</option>`).join('');
    if (file && !list.some((f) => f.name === file)) {
      opts += `<option value="${esc(file)}" selected>${esc(file)}</option>`;
    }
    setHTML(fileSel, opts);
    fileSel.value = file;
    files.render(list);
  }

  async function readFile() {
    if (!loaded) {
      const r = await get('/api/logs' + qs({ node, file, tail }));
      if (!ctx.isActive()) return;
      log.set(r.text || '');
      if (!r.text) log.placeholder('(empty)');
      nextOffset = r.next_offset;
      size = r.size;
      loaded = true;
      fileInfo.textContent = `${fmtBytes(size)}; showing the last ${tail} lines` + (isNum(r.offset) && r.offset > 0 ? ` (from byte ${r.offset})` : '');
      return;
    }
    if (!follow) return;
    const r = await get('/api/logs' + qs({ node, file, offset: nextOffset }));
    if (!ctx.isActive()) return;
    if (r.text) log.append(r.text);
    if (isNum(r.next_offset)) nextOffset = r.next_offset;
    if (isNum(r.size)) size = r.size;
    fileInfo.textContent = `${fmtBytes(size)}; following from byte ${nextOffset}`;
  }

  let listedAt = 0; // when the node and file pickers were last refreshed

  async function refresh() {
    // While following (every second), the pickers are refreshed only every few seconds.
    if (!listedAt || Date.now() - listedAt >= 4000 || !follow) {
      const nodes = await get('/api/nodes');
      const list = nodes.nodes || [];
      if (!node && list.length) node = (list.find((n) => n.is_head) || list.find((n) => n.alive) || list[0]).node_id;
      renderNodes(list);
      if (!node) {
        fileInfo.textContent = 'No nodes.';
        return;
      }
      const fl = await get('/api/logs' + qs({ node }));
      if (!ctx.isActive()) return;
      renderFiles(fl.files || []);
      listedAt = Date.now();
    }
    filesPanel.hidden = !!file;
    pre.hidden = !file;
    if (file) await readFile();
  }

  return {
    refresh,
    interval: () => (follow && file ? FOLLOW_MS : POLL_MS),
  };
}
