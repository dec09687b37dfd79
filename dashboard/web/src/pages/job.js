// #/jobs/ID — one submitted job and its log, appended as it grows until the job ends.

import { get, post, seg } from '../api.js';
import { esc, badge, fmtDuration, fmtTime, kvHTML, setHTML, isNum, DASH } from '../util.js';
import { ACTIVE_JOB } from './jobs.js';
import { LogView } from '../logview.js';

export function mount(el, ctx) {
  const id = ctx.params[0];
  el.innerHTML =
    `<div class="crumbs"><a href="#/jobs">Jobs</a> / <code>${esc(id)}</code></div>` +
    `<div class="title-row"><h1>Job <code>${esc(id)}</code></h1><span data-role="status"></span>` +
    '<button class="btn danger" data-action="stop" hidden>Stop</button></div>' +
    '<section class="panel" data-role="info"></section>' +
    '<section class="panel"><div class="panel-head"><h2>Log <span class="muted" data-role="log-state"></span></h2>' +
    '<label class="check"><input type="checkbox" data-role="autoscroll" checked> Scroll to end</label></div>' +
    '<pre class="log job-log" data-role="log"></pre></section>';
  const statusEl = el.querySelector('[data-role=status]');
  const info = el.querySelector('[data-role=info]');
  const stop = el.querySelector('[data-action=stop]');
  const logState = el.querySelector('[data-role=log-state]');
  const log = new LogView(el.querySelector('[data-role=log]'), el.querySelector('[data-role=autoscroll]'));

  let offset = 0;
  let ended = false;

  stop.addEventListener('click', async () => {
    stop.disabled = true;
    try {
      await post(`/api/jobs/${seg(id)}/stop`);
      ctx.notify(`Asked job ${id} to stop.`);
      ctx.refreshNow();
    } catch (e) {
      ctx.notify(`Stop failed: ${e.message}`, 'error');
    } finally {
      stop.disabled = false;
    }
  });

  async function readLog() {
    // Read what is new; a few chunks per poll if the server hands out pieces.
    for (let i = 0; i < 16 && !ended; i++) {
      const r = await get(`/api/jobs/${seg(id)}/logs?offset=${offset}`);
      if (!ctx.isActive()) return;
      const text = r.text || '';
      if (text) log.append(text);
      const moved = isNum(r.next_offset) && r.next_offset !== offset;
      if (isNum(r.next_offset)) offset = r.next_offset;
      if (r.ended && (!text || !moved)) ended = true;
      if (!text || !moved) break;
    }
  }

  async function refresh() {
    const j = await get(`/api/jobs/${seg(id)}`);
    if (!ctx.isActive()) return;
    setHTML(statusEl, badge(j.status));
    stop.hidden = !ACTIVE_JOB.has(j.status);
    const end = isNum(j.end_time) && j.end_time > 0 ? j.end_time : null;
    const dur = isNum(j.start_time) && j.start_time > 0 ? (end || Date.now() / 1000) - j.start_time : null;
    setHTML(
      info,
      kvHTML([
        ['Entrypoint', `<code>${esc(j.entrypoint)}</code>`],
        ['Type', esc(j.type)],
        ['Started', esc(fmtTime(j.start_time))],
        ['Ended', end ? esc(fmtTime(end)) : DASH],
        ['Duration', dur === null ? DASH : esc(fmtDuration(dur))],
        ['Exit code', j.exit_code === null || j.exit_code === undefined ? DASH : esc(j.exit_code)],
        ['PID', j.pid ? esc(j.pid) : DASH],
        ['Message', j.message ? esc(j.message) : DASH],
      ])
    );
    await readLog();
    logState.textContent = ended ? `(ended, ${offset} bytes)` : `(following, ${offset} bytes)`;
    if (!log.hasText()) log.placeholder(ended ? '(the log is empty)' : '(no output yet)');
  }

  return { refresh };
}
