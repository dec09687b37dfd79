// Line plots with Chartist (SVG: each plotted point is a `.ct-point` element).
//
// A LinePlot keeps one chart per container and redraws only when the data's signature
// changed, so polling the same data costs nothing. Series are thinned to MAX_POINTS.

import { LineChart, AutoScaleAxis } from 'chartist';
import { esc, fmtNum, isNum } from './util.js';

export const MAX_POINTS = 500;
export const PALETTE_SIZE = 12;

/** Keeps at most `max` points, evenly spaced, always keeping the first and the last. */
export function thin(points, max = MAX_POINTS) {
  if (points.length <= max) return points;
  const out = [];
  const step = (points.length - 1) / (max - 1);
  for (let i = 0; i < max; i++) out.push(points[Math.round(i * step)]);
  return out;
}

function axisLabel(v) {
  if (!isNum(v)) return '';
  const a = Math.abs(v);
  if (a >= 1e6 || (a < 1e-2 && a !== 0)) return v.toExponential(1);
  if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
  return String(Number(v.toPrecision(3)));
}

function signature(series) {
  // Cheap but complete enough: names, lengths and every point (series are small, ≤ 500 points).
  let s = '';
  for (const ser of series) {
    s += ser.name + '|' + ser.color + '|' + ser.points.length + ':';
    for (const p of ser.points) s += p[0] + ',' + p[1] + ';';
  }
  return s;
}

export class LinePlot {
  /**
   * @param container element the SVG is drawn into (its parent is usually `.plot`)
   * @param opts { height: px, emptyText }
   */
  constructor(container, opts = {}) {
    this.el = container;
    this.height = opts.height || 200;
    this.emptyText = opts.emptyText || 'no data yet';
    this.chart = null;
    this.sig = null;
    this.waiters = [];
    this.el.classList.add('plot-area');
    this.tip = null;
    this.onOver = (ev) => this.showTip(ev);
    this.onOut = (ev) => {
      if (ev.target.classList && ev.target.classList.contains('ct-point') && this.tip) this.tip.hidden = true;
    };
    this.el.addEventListener('mouseover', this.onOver);
    this.el.addEventListener('mouseout', this.onOut);
  }

  /**
   * series: [{ name, color: palette index, points: [[x, y], ...] }]
   * Resolves once the SVG is in the DOM (immediately when nothing changed).
   */
  set(series) {
    const clean = series
      .map((s) => ({
        name: String(s.name),
        color: (s.color || 0) % PALETTE_SIZE,
        points: thin(s.points.filter((p) => isNum(p[0]) && isNum(p[1]))),
      }))
      .filter((s) => s.points.length > 0);
    const sig = signature(clean);
    if (sig === this.sig) return Promise.resolve();
    this.sig = sig;
    if (!clean.length) {
      this.detach();
      this.el.innerHTML = `<div class="plot-empty">${esc(this.emptyText)}</div>`;
      return Promise.resolve();
    }
    const data = {
      series: clean.map((s) => ({
        name: s.name,
        className: 'ct-series-c' + s.color,
        data: s.points.map((p) => ({ x: p[0], y: p[1] })),
      })),
    };
    const done = new Promise((resolve) => this.waiters.push(resolve));
    if (!this.chart) {
      this.el.innerHTML = '';
      this.tip = null;
      this.chart = new LineChart(this.el, data, {
        height: this.height + 'px',
        showPoint: true,
        showLine: true,
        lineSmooth: false,
        fullWidth: true,
        chartPadding: { top: 12, right: 24, bottom: 4, left: 4 },
        axisX: { type: AutoScaleAxis, onlyInteger: true, scaleMinSpace: 50, labelInterpolationFnc: axisLabel },
        axisY: { type: AutoScaleAxis, scaleMinSpace: 24, offset: 44, labelInterpolationFnc: axisLabel },
      });
      this.chart.on('created', () => this.flush());
    } else {
      this.chart.update(data);
    }
    return done;
  }

  flush() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  showTip(ev) {
    const t = ev.target;
    if (!t.classList || !t.classList.contains('ct-point')) return;
    const v = (t.getAttribute('ct:value') || '').split(',');
    const g = t.parentNode;
    const name = g && g.getAttribute ? g.getAttribute('ct:series-name') : '';
    if (!this.tip) {
      this.tip = document.createElement('div');
      this.tip.className = 'plot-tip';
      this.el.appendChild(this.tip);
    }
    this.tip.textContent = `${name ? name + ': ' : ''}x=${v[0]}  y=${fmtNum(Number(v[1]))}`;
    const box = this.el.getBoundingClientRect();
    const pb = t.getBoundingClientRect();
    this.tip.style.left = Math.round(pb.left - box.left + 8) + 'px';
    this.tip.style.top = Math.round(pb.top - box.top - 28) + 'px';
    this.tip.hidden = false;
  }

  detach() {
    if (this.chart) {
      this.chart.detach();
      this.chart = null;
    }
    this.flush();
  }

  destroy() {
    this.detach();
    this.el.removeEventListener('mouseover', this.onOver);
    this.el.removeEventListener('mouseout', this.onOut);
  }
}

/** A colour swatch for legends, matching series colour `i`. */
export function swatch(i) {
  return `<span class="swatch c${i % PALETTE_SIZE}"></span>`;
}
