// Small formatting and HTML helpers shared by every page.

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes any value for use in HTML text or a double-quoted attribute. */
export function esc(v) {
  if (v === null || v === undefined) return '';
  return String(v).replace(/[&<>"']/g, (c) => ESC[c]);
}

export const DASH = '<span class="muted">—</span>';

export function isNum(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

/** 1234567 -> "1.18 MiB"; null -> dash. */
export function fmtBytes(n) {
  if (!isNum(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)) + ' ' + units[i];
}

// One formatter: Number.prototype.toLocaleString builds a new one on every call, which is
// slow when a 1000-row table formats 20,000 numbers.
const INT_FORMAT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** Compact number: integers with grouping (small ones as is), others to 4 significant digits. */
export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) {
    if (v > -1000 && v < 1000) return String(v);
    if (Math.abs(v) < 1e15) return INT_FORMAT.format(v);
  }
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e9)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

/** Ratio 0..1 -> "35%"; null -> dash. */
export function fmtPct(ratio) {
  if (!isNum(ratio)) return '—';
  const p = ratio * 100;
  return (p < 10 && p !== 0 ? p.toFixed(1) : Math.round(p)) + '%';
}

function pad(n) {
  return n < 10 ? '0' + n : String(n);
}

/** Unix seconds -> local "YYYY-MM-DD HH:MM:SS". */
export function fmtTime(t) {
  if (!isNum(t) || t <= 0) return '—';
  const d = new Date(t * 1000);
  return (
    d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
    pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds())
  );
}

/** Seconds -> "3h 12m", "4m 05s", "12.3s". */
export function fmtDuration(s) {
  if (!isNum(s) || s < 0) return '—';
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + 's';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + pad(Math.floor(s % 60)) + 's';
  const h = Math.floor(m / 60);
  if (h < 48) return h + 'h ' + pad(m % 60) + 'm';
  return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
}

/** A time cell: the local time, with how long ago it was as a tooltip relative to `now`. */
export function timeCell(t, now) {
  if (!isNum(t) || t <= 0) return DASH;
  const ref = isNum(now) ? now : Date.now() / 1000;
  return `<span title="${esc(fmtDuration(ref - t))} ago">${esc(fmtTime(t))}</span>`;
}

const BYTE_RESOURCES = /memory|bytes/i;

/** Formats one resource amount; memory-like resources are bytes. */
export function fmtResAmount(key, v) {
  return BYTE_RESOURCES.test(key) ? fmtBytes(v) : fmtNum(v);
}

/** Sort resource names: CPU, GPU, memory first, then the rest alphabetically. */
export function resKeys(...maps) {
  const order = ['CPU', 'GPU', 'memory', 'object_store_memory'];
  const keys = new Set();
  for (const m of maps) if (m) for (const k of Object.keys(m)) keys.add(k);
  return [...keys].sort((a, b) => {
    const ia = order.indexOf(a);
    const ib = order.indexOf(b);
    if (ia !== -1 || ib !== -1) return (ia === -1 ? 99 : ia) - (ib === -1 ? 99 : ib);
    return a < b ? -1 : a > b ? 1 : 0;
  });
}

const RES_LABELS = { memory: 'mem', object_store_memory: 'store' };

/** A short label for a resource name, with the full name as a tooltip. */
export function resLabel(k) {
  return `<span class="bar-label" title="${esc(k)}">${esc(RES_LABELS[k] || k)}</span>`;
}

/** {"CPU": 2, "memory": 1e9} -> "CPU 2 · memory 954 MiB" (HTML). */
export function fmtRes(map) {
  if (!map || typeof map !== 'object') return DASH;
  const keys = resKeys(map).filter((k) => map[k] !== 0);
  if (!keys.length) return DASH;
  return keys
    .map((k) => `<span class="res"><span class="res-k">${esc(k)}</span> ${esc(fmtResAmount(k, map[k]))}</span>`)
    .join(' ');
}

/** First 8 characters of an id with the whole id as a tooltip. */
export function shortId(id, n = 8) {
  if (id === null || id === undefined || id === '') return DASH;
  const s = String(id);
  return `<span class="id" title="${esc(s)}">${esc(s.length > n + 2 ? s.slice(0, n) : s)}</span>`;
}

function levelClass(ratio) {
  return ratio >= 0.95 ? ' crit' : ratio >= 0.8 ? ' warn' : '';
}

/**
 * A horizontal bar in CSS. `ratio` 0..1 (null: unknown, empty bar); `text` is shown on it.
 * extraClass/attrs let callers add hooks.
 */
export function barHTML(ratio, text, extraClass = '', attrs = '') {
  const known = isNum(ratio);
  const r = known ? Math.max(0, Math.min(1, ratio)) : 0;
  const width = (r * 100).toFixed(1);
  return (
    `<div class="bar${extraClass ? ' ' + extraClass : ''}${known ? levelClass(r) : ' unknown'}"${attrs}>` +
    `<div class="fill" style="width:${width}%"></div>` +
    `<span class="bar-text">${esc(text)}</span></div>`
  );
}

/** A used/total bar: "used / total (pct)". fmt formats each amount. */
export function usedTotalBar(used, total, fmt = fmtNum, extraClass = '') {
  if (!isNum(total) || total <= 0) {
    return isNum(used) ? barHTML(null, fmt(used) + ' used', extraClass) : barHTML(null, '—', extraClass);
  }
  const u = isNum(used) ? used : 0;
  const ratio = u / total;
  let a = fmt(u);
  const b = fmt(total);
  // "71.3 GiB / 126 GiB" -> "71.3 / 126 GiB"
  const unit = / [A-Za-z]+$/.exec(b);
  if (unit && a.endsWith(unit[0])) a = a.slice(0, -unit[0].length);
  return barHTML(ratio, `${a} / ${b} (${fmtPct(ratio)})`, extraClass);
}

const STATE_CLASS = {
  ALIVE: 'ok', RUNNING: 'run', SUCCEEDED: 'ok', FINISHED: 'ok', TERMINATED: 'ok', CREATED: 'ok',
  PENDING: 'wait', PENDING_CREATION: 'wait', RESTARTING: 'wait', PAUSED: 'wait', STARTING: 'wait',
  RESIZING: 'wait', RESCHEDULING: 'wait',
  DEAD: 'dead', STOPPED: 'dead', REMOVED: 'dead',
  FAILED: 'bad', ERROR: 'bad',
};

/** A coloured state badge. */
export function badge(state) {
  if (state === null || state === undefined || state === '') return DASH;
  const s = String(state);
  const cls = STATE_CLASS[s.toUpperCase()] || 'other';
  return `<span class="badge b-${cls}">${esc(s)}</span>`;
}

/** Sets innerHTML only when it changed (keeps text selection and focus when nothing moved). */
export function setHTML(el, html) {
  if (el._html === html) return false;
  el._html = html;
  el.innerHTML = html;
  return true;
}

/** Builds the hash for a route with an optional query object. */
export function href(path, query) {
  let h = '#' + path;
  if (query) {
    const q = Object.entries(query)
      .filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([k, v]) => encodeURIComponent(k) + '=' + encodeURIComponent(v))
      .join('&');
    if (q) h += '?' + q;
  }
  return h;
}

/** Link to a worker's output file on the logs page. */
export function workerLogHref(nodeId, pid) {
  return href('/logs', { node: nodeId, file: `worker-${pid}.out` });
}

/** Case-insensitive AND-of-words filter: every word of `query` appears in one of `fields`. */
export function matchFilter(query, fields) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return true;
  const hay = fields.map((f) => (f === null || f === undefined ? '' : String(f))).join('\u0000').toLowerCase();
  return words.every((w) => hay.includes(w));
}

/** Renders a key/value summary (a definition list in a grid). pairs: [label, html]. */
export function kvHTML(pairs) {
  return (
    '<dl class="kv">' +
    pairs.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${v === '' || v === undefined || v === null ? DASH : v}</dd>`).join('') +
    '</dl>'
  );
}

/** A value for a table cell: numbers compact, objects as JSON, strings escaped. */
export function valueHTML(v) {
  if (v === null || v === undefined) return DASH;
  if (typeof v === 'number') return esc(fmtNum(v));
  if (typeof v === 'object') return `<code>${esc(JSON.stringify(v))}</code>`;
  return esc(v);
}

/** {"a": {"b": 1}, "c": 2} -> {"a.b": 1, "c": 2}; arrays and deeper objects stay whole. */
export function flatten(obj, prefix = '', out = {}, depth = 0) {
  if (!obj || typeof obj !== 'object') return out;
  for (const k of Object.keys(obj)) {
    const v = obj[k];
    const key = prefix ? prefix + '.' + k : k;
    if (v && typeof v === 'object' && !Array.isArray(v) && depth < 2) flatten(v, key, out, depth + 1);
    else out[key] = v;
  }
  return out;
}

/** A config as wrapping "key value" pairs. */
export function configHTML(cfg) {
  const flat = flatten(cfg);
  const keys = Object.keys(flat).sort();
  if (!keys.length) return DASH;
  return keys.map((k) => `<span class="res"><span class="res-k">${esc(k)}</span> ${valueHTML(flat[k])}</span>`).join(' ');
}
