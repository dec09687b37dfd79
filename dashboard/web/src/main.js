// The dashboard's entry: layout, hash router, polling loop and the error banner.

import 'chartist/dist/index.css';
import './app.css';

import { get } from './api.js';
import { esc } from './util.js';
import * as overview from './pages/overview.js';
import * as nodes from './pages/nodes.js';
import * as actors from './pages/actors.js';
import * as tasks from './pages/tasks.js';
import * as jobs from './pages/jobs.js';
import * as job from './pages/job.js';
import * as placementGroups from './pages/placement_groups.js';
import * as train from './pages/train.js';
import * as trainRun from './pages/train_run.js';
import * as tune from './pages/tune.js';
import * as tuneExperiment from './pages/tune_experiment.js';
import * as logs from './pages/logs.js';

const POLL_MS = 2000;

// name: the value of body[data-page] once rendered; nav: which left-nav entry is lit.
const ROUTES = [
  { re: /^\/$/, name: 'overview', nav: 'overview', title: 'Overview', mod: overview },
  { re: /^\/nodes$/, name: 'nodes', nav: 'nodes', title: 'Nodes', mod: nodes },
  { re: /^\/actors$/, name: 'actors', nav: 'actors', title: 'Actors', mod: actors },
  { re: /^\/tasks$/, name: 'tasks', nav: 'tasks', title: 'Tasks', mod: tasks },
  { re: /^\/jobs$/, name: 'jobs', nav: 'jobs', title: 'Jobs', mod: jobs },
  { re: /^\/jobs\/([^/]+)$/, name: 'job', nav: 'jobs', title: 'Job', mod: job },
  { re: /^\/placement-groups$/, name: 'placement-groups', nav: 'placement-groups', title: 'Placement groups', mod: placementGroups },
  { re: /^\/train$/, name: 'train', nav: 'train', title: 'Train', mod: train },
  { re: /^\/train\/([^/]+)$/, name: 'train-run', nav: 'train', title: 'Train run', mod: trainRun },
  { re: /^\/tune$/, name: 'tune', nav: 'tune', title: 'Tune', mod: tune },
  { re: /^\/tune\/([^/]+)$/, name: 'tune-experiment', nav: 'tune', title: 'Tune experiment', mod: tuneExperiment },
  { re: /^\/logs$/, name: 'logs', nav: 'logs', title: 'Logs', mod: logs },
];

const NAV = [
  ['overview', '#/', 'Overview'],
  ['nodes', '#/nodes', 'Nodes'],
  ['actors', '#/actors', 'Actors'],
  ['tasks', '#/tasks', 'Tasks'],
  ['jobs', '#/jobs', 'Jobs'],
  ['placement-groups', '#/placement-groups', 'Placement groups'],
  ['train', '#/train', 'Train'],
  ['tune', '#/tune', 'Tune'],
  ['logs', '#/logs', 'Logs'],
];

const notFound = {
  mount(el, ctx) {
    el.innerHTML = `<h1>Not found</h1><p>No page at <code>${esc(ctx.path)}</code>. <a href="#/">Overview</a></p>`;
    return { refresh: async () => {} };
  },
};

function parseHash() {
  let h = window.location.hash.replace(/^#/, '');
  if (!h.startsWith('/')) h = '/' + h;
  const qi = h.indexOf('?');
  const path = (qi === -1 ? h : h.slice(0, qi)).replace(/(.)\/+$/, '$1');
  const query = new URLSearchParams(qi === -1 ? '' : h.slice(qi + 1));
  for (const r of ROUTES) {
    const m = r.re.exec(path);
    if (m) {
      let params;
      try {
        params = m.slice(1).map(decodeURIComponent);
      } catch (e) {
        params = m.slice(1);
      }
      return { route: r, params, query, path };
    }
  }
  return { route: { name: 'not-found', nav: '', title: 'Not found', mod: notFound }, params: [], query, path };
}

// ---- layout -------------------------------------------------------------------------------

const app = document.getElementById('app') || document.body;
app.innerHTML =
  '<div class="layout">' +
  '<nav class="sidenav"><a class="brand" href="#/">gantry</a>' +
  NAV.map(([id, h, label]) => `<a class="nav-link" data-nav="${id}" href="${h}">${label}</a>`).join('') +
  '<div class="nav-foot" id="head-info"></div></nav>' +
  '<main class="main"><div id="poll-error" class="banner error" hidden></div>' +
  '<div id="messages"></div><div id="page"></div></main></div>';

const pollError = document.getElementById('poll-error');
const messages = document.getElementById('messages');
const body = document.body;

function errorText(e) {
  if (!e) return 'unknown error';
  const where = e.path ? ` (${e.path})` : '';
  return (e.message || String(e)) + where;
}

function showPollError(e, haveData) {
  if (e && e.status === 401) return; // on its way to /login
  pollError.hidden = false;
  pollError.innerHTML =
    `<strong>Request failed:</strong> ${esc(errorText(e))} ` +
    `<span class="muted">— ${haveData ? 'showing the last data received; ' : ''}retrying.</span>`;
}

function clearPollError() {
  if (!pollError.hidden) {
    pollError.hidden = true;
    pollError.textContent = '';
  }
}

/** A dismissable message above the page: kind 'error' stays, 'ok' fades after a few seconds. */
export function notify(text, kind = 'ok') {
  const div = document.createElement('div');
  div.className = 'banner ' + (kind === 'error' ? 'error' : 'ok');
  div.innerHTML = `<span>${esc(text)}</span><button class="close" title="Dismiss">×</button>`;
  div.querySelector('button').addEventListener('click', () => div.remove());
  messages.appendChild(div);
  if (kind !== 'error') setTimeout(() => div.remove(), 6000);
}

// ---- router and polling ---------------------------------------------------------------------

let current = null;

async function tick(c) {
  if (c.dead) return;
  clearTimeout(c.timer);
  c.timer = null;
  if (c.busy) {
    c.again = true;
    return;
  }
  if (!document.hidden) {
    c.busy = true;
    try {
      await c.page.refresh();
      if (c.dead) return;
      clearPollError();
      if (!c.ready) {
        c.ready = true;
        body.dataset.page = c.name;
        body.dataset.ready = '1';
      }
    } catch (e) {
      if (c.dead) return;
      showPollError(e, c.ready);
      if (!(e && e.name === 'ApiError')) console.error(e);
    } finally {
      c.busy = false;
    }
  }
  if (c.dead) return;
  const iv = c.again ? 0 : typeof c.page.interval === 'function' ? c.page.interval() : c.page.interval || POLL_MS;
  c.again = false;
  c.timer = setTimeout(() => tick(c), iv);
}

function mountRoute() {
  if (current) {
    current.dead = true;
    clearTimeout(current.timer);
    if (current.page && current.page.destroy) current.page.destroy();
  }
  delete body.dataset.ready;
  delete body.dataset.page;
  clearPollError();
  messages.textContent = '';

  const { route, params, query, path } = parseHash();
  for (const a of document.querySelectorAll('.nav-link')) a.classList.toggle('active', a.dataset.nav === route.nav);
  document.title = route.title + ' · gantry';

  const old = document.getElementById('page');
  const el = document.createElement('div');
  el.id = 'page';
  el.className = 'page page-' + route.name;
  old.replaceWith(el);
  window.scrollTo(0, 0);

  const c = { name: route.name, dead: false, busy: false, again: false, ready: false, timer: null, page: null };
  const ctx = {
    params,
    query,
    path,
    notify,
    refreshNow: () => tick(c),
    isActive: () => !c.dead,
  };
  current = c;
  c.page = route.mod.mount(el, ctx);
  tick(c);
}

window.addEventListener('hashchange', mountRoute);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && current) tick(current); // catch up at once when the tab comes back
});

mountRoute();

// The head's address and version at the bottom of the nav (best effort, once).
get('/api/cluster')
  .then((c) => {
    document.getElementById('head-info').innerHTML =
      `<div>${esc(c.head_address || '')}</div><div>v${esc(c.version || '?')}</div>`;
  })
  .catch(() => {});
