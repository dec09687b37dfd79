// A table rendered as one HTML string per update, sortable by clicking a column header.
//
// columns: [{ key, label, cell(row) -> html, value(row) -> sort value, cls, thCls, title, sortable }]
//   cell defaults to the escaped row[key]; value defaults to row[key]; cls is set on the
//   header and every cell of the column, thCls on the header only.
// Rows are sorted in memory; the DOM is replaced only when the resulting HTML changed.

import { esc, setHTML } from './util.js';

const collator = new Intl.Collator('en', { numeric: true, sensitivity: 'base' });

function rank(v) {
  if (v === null || v === undefined || v === '' || (typeof v === 'number' && Number.isNaN(v))) return 2;
  return typeof v === 'number' || typeof v === 'boolean' ? 0 : 1;
}

/** Compares two sort values: numbers before strings, missing values always last. */
export function compareValues(a, b, dir = 1) {
  const ra = rank(a);
  const rb = rank(b);
  if (ra === 2 || rb === 2) return ra - rb;
  if (ra !== rb) return (ra - rb) * dir;
  if (ra === 0) return (Number(a) - Number(b)) * dir;
  return collator.compare(String(a), String(b)) * dir;
}

/** Sorts rows by one column (stable); returns a new array. */
export function sortRows(rows, column, dir) {
  if (!column) return rows.slice();
  const getValue = column.value || ((r) => r[column.key]);
  const decorated = rows.map((r, i) => [getValue(r), i, r]);
  decorated.sort((x, y) => compareValues(x[0], y[0], dir) || x[1] - y[1]);
  return decorated.map((d) => d[2]);
}

export class Table {
  /**
   * @param container element the table is rendered into
   * @param opts { columns, className, rowAttrs(row) -> ' data-x="..."', rowClass(row) -> 'a b',
   *               empty: text when there are no rows, sort: { key, dir: 1 | -1 }, onSort() }
   */
  constructor(container, opts) {
    this.el = container;
    this.columns = opts.columns;
    this.className = opts.className || '';
    this.rowAttrs = opts.rowAttrs || null;
    this.rowClass = opts.rowClass || null;
    this.empty = opts.empty || 'Nothing here yet.';
    this.sort = opts.sort ? { ...opts.sort } : null;
    this.onSort = opts.onSort || null;
    this.rows = [];
    this.sorted = [];
    this.el.addEventListener('click', (ev) => {
      const th = ev.target.closest('th[data-sort]');
      if (!th || !this.el.contains(th)) return;
      const key = th.dataset.sort;
      if (this.sort && this.sort.key === key) this.sort.dir = -this.sort.dir;
      else this.sort = { key, dir: 1 };
      this.render(this.rows);
      if (this.onSort) this.onSort(this.sort);
    });
  }

  setColumns(columns) {
    this.columns = columns;
  }

  column(key) {
    return this.columns.find((c) => c.key === key) || null;
  }

  /** Renders rows (sorted by the current sort); returns the rows in display order. */
  render(rows) {
    this.rows = rows || [];
    const col = this.sort ? this.column(this.sort.key) : null;
    this.sorted = col ? sortRows(this.rows, col, this.sort.dir) : this.rows;
    setHTML(this.el, this.html(this.sorted));
    return this.sorted;
  }

  html(rows) {
    const cols = this.columns;
    const parts = [`<table class="tbl${this.className ? ' ' + this.className : ''}"><thead><tr>`];
    for (const c of cols) {
      const sortable = c.sortable !== false;
      let cls = (c.cls || '') + (c.thCls ? ' ' + c.thCls : '');
      if (sortable) cls += ' sortable';
      if (this.sort && this.sort.key === c.key) cls += this.sort.dir > 0 ? ' sorted-asc' : ' sorted-desc';
      parts.push(
        `<th${cls.trim() ? ` class="${cls.trim()}"` : ''}${sortable ? ` data-sort="${esc(c.key)}"` : ''}` +
          `${c.title ? ` title="${esc(c.title)}"` : ''}>${esc(c.label)}</th>`
      );
    }
    parts.push('</tr></thead><tbody>');
    if (!rows.length) {
      parts.push(`<tr class="empty"><td colspan="${cols.length}">${esc(this.empty)}</td></tr>`);
    }
    const rowAttrs = this.rowAttrs;
    const rowClass = this.rowClass;
    for (const r of rows) {
      const rc = rowClass ? rowClass(r) : '';
      parts.push(`<tr${rc ? ` class="${rc}"` : ''}${rowAttrs ? rowAttrs(r) : ''}>`);
      for (const c of cols) {
        const v = c.cell ? c.cell(r) : esc(r[c.key]);
        parts.push(c.cls ? `<td class="${c.cls}">${v}</td>` : `<td>${v}</td>`);
      }
      parts.push('</tr>');
    }
    parts.push('</tbody></table>');
    return parts.join('');
  }
}
