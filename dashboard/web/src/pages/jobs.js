// #/jobs — submitted jobs (with Stop), drivers, and a form to submit a job.

import { get, post, seg } from '../api.js';
import { Table } from '../table.js';
import { esc, badge, fmtDuration, shortId, timeCell, href, isNum, DASH } from '../util.js';

export const ACTIVE_JOB = new Set(['PENDING', 'RUNNING']);

/** "A=1 B=two" -> {A: "1", B: "two"}; throws on a word without "=". */
function parseEnv(text) {
  const env = {};
  for (const w of text.split(/\s+/).filter(Boolean)) {
    const i = w.indexOf('=');
    if (i <= 0) throw new Error(`"${w}" is not NAME=VALUE`);
    env[w.slice(0, i)] = w.slice(i + 1);
  }
  return env;
}

export function mount(el, ctx) {
  el.innerHTML =
    '<h1>Jobs</h1>' +
    '<section class="panel"><h2>Submit a job</h2>' +
    '<form class="submit-form" data-role="form" autocomplete="off">' +
    '<label>Entrypoint <input name="entrypoint" required placeholder="./my_program --flag value" size="48"></label>' +
    '<label>Working dir <input name="working_dir" placeholder="/abs/path (optional)" size="28"></label>' +
    '<label>Env <input name="env" placeholder="A=1 B=2 (optional)" size="20"></label>' +
    '<button type="submit" class="btn primary">Submit</button>' +
    '<span class="form-note muted">The entrypoint is split on spaces.</span></form></section>' +
    '<section class="panel"><h2>Submissions</h2><div data-role="jobs" class="table-wrap"></div></section>' +
    '<section class="panel"><h2>Drivers</h2><div data-role="drivers" class="table-wrap"></div></section>';
  const form = el.querySelector('[data-role=form]');
  let now = Date.now() / 1000;

  const jobs = new Table(el.querySelector('[data-role=jobs]'), {
    className: 'jobs-table',
    empty: 'No jobs submitted.',
    sort: { key: 'start_time', dir: -1 },
    rowClass: () => 'job-row',
    rowAttrs: (j) => ` data-job-id="${esc(j.job_id)}" data-status="${esc(j.status)}"`,
    columns: [
      { key: 'job_id', label: 'Job', cell: (j) => `<a href="${href('/jobs/' + encodeURIComponent(j.job_id))}"><code>${esc(j.job_id)}</code></a>` },
      { key: 'status', label: 'Status', cell: (j) => badge(j.status) },
      { key: 'entrypoint', label: 'Entrypoint', cls: 'wrap', cell: (j) => `<code>${esc(j.entrypoint)}</code>` },
      { key: 'start_time', label: 'Started', cell: (j) => timeCell(j.start_time, now) },
      { key: 'end_time', label: 'Ended', cell: (j) => timeCell(j.end_time, now) },
      {
        key: 'duration',
        label: 'Duration',
        value: (j) => (isNum(j.start_time) ? (isNum(j.end_time) && j.end_time > 0 ? j.end_time : now) - j.start_time : null),
        cell: (j) =>
          isNum(j.start_time) && j.start_time > 0
            ? esc(fmtDuration((isNum(j.end_time) && j.end_time > 0 ? j.end_time : now) - j.start_time))
            : DASH,
      },
      { key: 'exit_code', label: 'Exit', cls: 'num', cell: (j) => (j.exit_code === null || j.exit_code === undefined ? DASH : esc(j.exit_code)) },
      { key: 'pid', label: 'PID', cls: 'num', cell: (j) => (j.pid ? esc(j.pid) : DASH) },
      { key: 'message', label: 'Message', cls: 'wrap msg', cell: (j) => (j.message ? esc(j.message) : DASH) },
      {
        key: 'actions',
        label: '',
        sortable: false,
        cls: 'actions',
        cell: (j) =>
          `<a class="btn small" href="${href('/jobs/' + encodeURIComponent(j.job_id))}">Log</a>` +
          (ACTIVE_JOB.has(j.status)
            ? `<button class="btn small danger" data-action="stop" data-job-id="${esc(j.job_id)}">Stop</button>`
            : ''),
      },
    ],
  });

  const drivers = new Table(el.querySelector('[data-role=drivers]'), {
    className: 'drivers-table',
    empty: 'No drivers.',
    sort: { key: 'start_time', dir: -1 },
    rowClass: () => 'driver-row',
    rowAttrs: (d) => ` data-job-id="${esc(d.job_id)}"`,
    columns: [
      { key: 'job_id', label: 'Job', cell: (d) => shortId(d.job_id, 12) },
      { key: 'state', label: 'State', cell: (d) => badge(d.state) },
      { key: 'executable', label: 'Executable', cls: 'wrap', cell: (d) => `<code>${esc(d.executable)}</code>` },
      { key: 'driver_address', label: 'Driver address', cell: (d) => `<code>${esc(d.driver_address)}</code>` },
      { key: 'start_time', label: 'Started', cell: (d) => timeCell(d.start_time, now) },
    ],
  });

  el.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action=stop]');
    if (!b || b.disabled) return;
    b.disabled = true;
    const id = b.dataset.jobId;
    try {
      await post(`/api/jobs/${seg(id)}/stop`);
      ctx.notify(`Asked job ${id} to stop.`);
      ctx.refreshNow();
    } catch (e) {
      ctx.notify(`Stop failed: ${e.message}`, 'error');
      b.disabled = false;
    }
  });

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const entrypoint = form.entrypoint.value.split(/\s+/).filter(Boolean);
    if (!entrypoint.length) return;
    const body = { entrypoint };
    const wd = form.working_dir.value.trim();
    if (wd) body.working_dir = wd;
    try {
      const env = parseEnv(form.env.value);
      if (Object.keys(env).length) body.env = env;
    } catch (e) {
      ctx.notify(`Env: ${e.message}`, 'error');
      return;
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const r = await post('/api/jobs', body);
      ctx.notify(`Submitted job ${r.job_id}.`);
      window.location.hash = '#/jobs/' + encodeURIComponent(r.job_id);
    } catch (e) {
      ctx.notify(`Submit failed: ${e.message}`, 'error');
    } finally {
      button.disabled = false;
    }
  });

  async function refresh() {
    const data = await get('/api/jobs');
    now = Date.now() / 1000;
    jobs.render(data.jobs || []);
    drivers.render(data.drivers || []);
  }

  return { refresh };
}
