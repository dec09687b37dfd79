// Development aid: serves dist/ like the head does (/ and /assets/NAME) and canned JSON for
// every endpoint in dashboard/API.md, so the web app can be worked on without a cluster.
//
//   node dev/fake_api_server.mjs [PORT]           (default 8265, listens on 127.0.0.1)
//
// Environment:
//   FAKE_FAIL=REGEX   answer 500 {"error": ...} for API paths matching REGEX (try the banner)
//   FAKE_AUTH=1       require the cookie that POST /login sets (try the 401 redirect)
// and at run time: POST /dev/fail?re=REGEX sets FAKE_FAIL (an empty re clears it).
//
// The data is generated from a fixed seed: 2 nodes (one real-looking GPU, two logical GPUs),
// actors, tasks, jobs with logs, placement groups, Train runs (one with 300 history points)
// and Tune experiments (one with 1000 trials). Running jobs' logs and log files grow.

import http from 'node:http';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist');
const PORT = Number(process.argv[2] || process.env.PORT || 8265);
let FAIL = process.env.FAKE_FAIL ? new RegExp(process.env.FAKE_FAIL) : null;
const AUTH = process.env.FAKE_AUTH === '1';
const COOKIE = 'gantry_session=fake-session';

// ---- deterministic randomness ------------------------------------------------------------

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(20251201);
const hex = (n) => Array.from({ length: n }, () => Math.floor(rnd() * 16).toString(16)).join('');
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const round = (v, d = 4) => Number(v.toFixed(d));

const GiB = 1024 ** 3;
const START = Date.now() / 1000;
const T0 = Math.floor(START) - 3600; // "the cluster started an hour ago"
const now = () => Date.now() / 1000;
const elapsed = () => now() - START;

// ---- nodes ---------------------------------------------------------------------------------

const HEAD = hex(32);
const NODE2 = hex(32);

function nodes() {
  const e = elapsed();
  const wave = (p, lo, hi) => round(lo + (hi - lo) * (0.5 + 0.5 * Math.sin(e / p)), 3);
  return [
    {
      node_id: HEAD,
      hostname: 'gpu-box-01',
      address: '10.0.0.11:6380',
      alive: true,
      is_head: true,
      resources: {
        total: { CPU: 16, GPU: 1, memory: 96 * GiB, object_store_memory: 8 * GiB },
        available: { CPU: 5, GPU: 0, memory: 60 * GiB, object_store_memory: 6.5 * GiB },
      },
      object_store: { used_bytes: 1.5 * GiB, capacity_bytes: 8 * GiB, objects: 1342, evicted: 17 },
      workers: { total: 14, idle: 3 },
      cpu: { utilization: wave(7, 0.55, 0.75), cores: 16 },
      memory: { used_bytes: 71.3 * GiB, total_bytes: 125.7 * GiB },
      gpus: [
        {
          index: 0,
          name: 'NVIDIA H200',
          logical: false,
          utilization: wave(5, 0.82, 0.97),
          memory_used_bytes: 118.2 * GiB,
          memory_total_bytes: 140.4 * GiB,
        },
      ],
    },
    {
      node_id: NODE2,
      hostname: 'cpu-box-02',
      address: '10.0.0.12:6380',
      alive: true,
      is_head: false,
      resources: {
        total: { CPU: 8, GPU: 2, memory: 24 * GiB, object_store_memory: 4 * GiB, accel: 4 },
        available: { CPU: 6, GPU: 1, memory: 20 * GiB, object_store_memory: 3.9 * GiB, accel: 1 },
      },
      object_store: { used_bytes: 0.1 * GiB, capacity_bytes: 4 * GiB, objects: 88, evicted: 0 },
      workers: { total: 4, idle: 2 },
      cpu: { utilization: wave(11, 0.1, 0.3), cores: 8 },
      memory: { used_bytes: 9.8 * GiB, total_bytes: 31.3 * GiB },
      gpus: [
        { index: 0, name: 'logical GPU', logical: true, utilization: null, memory_used_bytes: null, memory_total_bytes: null, in_use: true },
        { index: 1, name: 'logical GPU', logical: true, utilization: null, memory_used_bytes: null, memory_total_bytes: null, in_use: false },
      ],
    },
  ];
}

// ---- actors ----------------------------------------------------------------------------------

const JOB1 = hex(8);
const JOB2 = hex(8);
const actors = [];
function addActor(class_name, name, state, node_id, extra = {}) {
  const pid = 20000 + Math.floor(rnd() * 40000);
  actors.push({
    actor_id: hex(32),
    class_name,
    name,
    state,
    node_id,
    pid: state === 'PENDING' ? null : pid,
    job_id: pick([JOB1, JOB2]),
    address: node_id === HEAD ? `10.0.0.11:${30000 + (pid % 1000)}` : `10.0.0.12:${30000 + (pid % 1000)}`,
    resources: extra.resources || { CPU: 1 },
    restarts: extra.restarts || 0,
    detached: !!extra.detached,
    death_cause: extra.death_cause || null,
    calls: extra.calls || { finished: Math.floor(rnd() * 5000), failed: Math.floor(rnd() * 3), running: state === 'ALIVE' ? Math.floor(rnd() * 3) : 0 },
  });
}
addActor('ParameterServer', 'ps', 'ALIVE', HEAD, { resources: { CPU: 2, memory: 4 * GiB }, detached: true });
addActor('TrainWorker', '', 'ALIVE', HEAD, { resources: { CPU: 4, GPU: 1 } });
addActor('TrainWorker', '', 'ALIVE', NODE2, { resources: { CPU: 1, GPU: 1, accel: 3 } });
for (let i = 0; i < 6; i++) addActor('TrialRunner', `trial-${i}`, 'ALIVE', i % 2 ? NODE2 : HEAD);
addActor('Counter', 'counter', 'ALIVE', NODE2);
addActor('Logger', 'log-sink', 'RESTARTING', HEAD, { restarts: 2 });
addActor('Evaluator', '', 'PENDING', '', { resources: { CPU: 32 } });
addActor('Counter', '', 'DEAD', NODE2, { death_cause: 'the worker process exited with signal 9 (SIGKILL): out of memory?', restarts: 3 });
addActor('Downloader', 'fetch', 'DEAD', HEAD, { death_cause: 'killed by gantry.kill(no_restart=true)' });

// ---- tasks -----------------------------------------------------------------------------------

const FUNCTIONS = ['square', 'load_shard', 'preprocess', 'reduce_sum', 'train_step', 'evaluate', 'write_parquet'];
const runningTasks = [];
for (let i = 0; i < 37; i++) {
  const node = i % 3 ? HEAD : NODE2;
  runningTasks.push({
    task_id: hex(40),
    name: pick(FUNCTIONS),
    node_id: node,
    pid: 20000 + Math.floor(rnd() * 40000),
    started: round(START - rnd() * 600, 3),
    actor_id: i % 7 === 0 ? actors[1].actor_id : null,
  });
}
const ERR_TYPES = [
  ['TaskError', 'ValueError: shard 17 is empty'],
  ['WorkerCrashedError', 'The worker died unexpectedly while executing this task (signal 11, SIGSEGV).'],
  ['ObjectLostError', 'Object 7f3a...c2 was lost: its only copy was on a node that died'],
  ['TaskError', 'std::runtime_error: cannot open /data/part-00042.parquet: No such file or directory'],
  ['OutOfMemoryError', 'Task was killed: node memory above the 95% threshold'],
];
const failures = [];
for (let i = 0; i < 9; i++) {
  const [error_type, message] = ERR_TYPES[i % ERR_TYPES.length];
  failures.push({
    task_id: hex(40),
    name: pick(FUNCTIONS),
    time: round(START - i * 97 - rnd() * 40, 3),
    error_type,
    message,
    node_id: i % 2 ? HEAD : NODE2,
    pid: 20000 + Math.floor(rnd() * 40000),
  });
}
function tasks() {
  const e = Math.floor(elapsed());
  return {
    functions: FUNCTIONS.map((name, i) => ({
      name,
      pending: i === 3 ? 12 : i % 2,
      running: runningTasks.filter((t) => t.name === name).length,
      finished: 1000 * (i + 1) + e * (i + 1),
      failed: failures.filter((f) => f.name === name).length,
    })),
    running: runningTasks,
    recent_failures: failures,
    owners_asked: 3,
    owners_silent: 0,
  };
}

// ---- placement groups -------------------------------------------------------------------------

const placementGroups = [
  { id: hex(36), name: 'train-mlp', strategy: 'PACK', state: 'CREATED', bundles: [{ resources: { CPU: 4, GPU: 1 }, node_id: HEAD }, { resources: { CPU: 1, GPU: 1 }, node_id: NODE2 }] },
  { id: hex(36), name: '', strategy: 'SPREAD', state: 'CREATED', bundles: [{ resources: { CPU: 1 }, node_id: HEAD }, { resources: { CPU: 1 }, node_id: NODE2 }, { resources: { CPU: 1 }, node_id: HEAD }] },
  { id: hex(36), name: 'big-eval', strategy: 'STRICT_PACK', state: 'PENDING', bundles: [{ resources: { CPU: 32, memory: 200 * GiB }, node_id: null }] },
  { id: hex(36), name: 'old', strategy: 'PACK', state: 'REMOVED', bundles: [{ resources: { CPU: 2 }, node_id: null }] },
];

// ---- jobs and their logs ------------------------------------------------------------------------

const jobs = [];
function addJob(entrypoint, status, startAgo, duration, exit_code, message) {
  const start_time = round(startAgo === 0 ? now() : START - startAgo, 3);
  const j = {
    job_id: hex(16),
    type: 'SUBMISSION',
    entrypoint,
    status,
    start_time,
    end_time: duration === null ? null : round(start_time + duration, 3),
    exit_code,
    message,
    pid: 12000 + Math.floor(rnd() * 1000),
    _lines: status === 'RUNNING' ? null : 40 + Math.floor(rnd() * 200),
  };
  jobs.push(j);
  return j;
}
addJob('./train_mlp --epochs 50 --workers 2', 'RUNNING', 1800, null, null, 'running');
addJob('./tune_sweep --samples 1000', 'SUCCEEDED', 7200, 3000, 0, 'exited with code 0');
addJob('./etl /data/in /data/out', 'FAILED', 9000, 61.2, 3, 'exited with code 3');
addJob('sleep 3600', 'STOPPED', 12000, 400, -15, 'stopped by the user');

function jobLog(j) {
  const lines = j._lines !== null ? j._lines : 30 + Math.floor((now() - j.start_time) * 2);
  let s = '';
  for (let i = 0; i < lines; i++) {
    s += `[${new Date((j.start_time + i * 0.5) * 1000).toISOString()}] step ${i}: loss=${round(2 / (1 + i / 50), 5)} ${i % 17 === 0 ? 'checkpoint written' : ''}\n`;
  }
  if (j._lines !== null) s += j.status === 'SUCCEEDED' ? 'done.\n' : `fatal: ${j.message}\n`;
  return s;
}

const drivers = [
  { job_id: JOB1, state: 'RUNNING', driver_address: '10.0.0.11:41234', executable: '/home/me/gantry/build/examples/train_mlp', start_time: round(START - 1800, 3) },
  { job_id: JOB2, state: 'FINISHED', driver_address: '10.0.0.11:40001', executable: '/home/me/gantry/build/examples/tune_sweep', start_time: round(START - 7200, 3) },
];

// ---- log files ----------------------------------------------------------------------------------

function logFiles(node) {
  const files = [];
  const add = (name, kind, pid, baseLines, growth) => files.push({ name, kind, pid, baseLines, growth });
  if (node === HEAD) {
    add('head.log', 'head', null, 2500, 1);
    add('agent.log', 'agent', null, 800, 0.2);
    add(`driver-${drivers[0].job_id}.out`, 'driver', null, 300, 2);
  } else {
    add('agent.log', 'agent', null, 400, 0.2);
  }
  for (const a of actors) {
    if (a.node_id !== node || !a.pid) continue;
    add(`worker-${a.pid}.out`, 'worker-output', a.pid, 150 + (a.pid % 900), a.state === 'ALIVE' ? 1 : 0);
    add(`worker-${a.pid}.log`, 'worker-log', a.pid, 60, 0.1);
  }
  return files;
}

function fileText(node, f) {
  const lines = f.baseLines + Math.floor(elapsed() * f.growth);
  const parts = [];
  for (let i = 0; i < lines; i++) {
    const t = new Date((T0 + i * 1.3) * 1000).toISOString();
    parts.push(`${t} ${i % 50 === 49 ? 'WARN ' : 'INFO '}${f.name}:${100 + (i % 300)}] line ${i} of ${f.name} on ${node.slice(0, 8)}`);
  }
  return parts.join('\n') + '\n';
}

// ---- Train runs --------------------------------------------------------------------------------

function trainRun(name, state, points, opts) {
  const history = [];
  const started = START - points * 3 - 60;
  for (let i = 1; i <= points; i++) {
    const metrics = {};
    metrics.loss = round(2.3 * Math.exp(-i / (points / 3)) + 0.08 + (rnd() - 0.5) * 0.05, 5);
    if (opts.val) metrics.val_loss = round(metrics.loss * 1.1 + 0.03 + (rnd() - 0.5) * 0.04, 5);
    metrics.epoch = Math.floor(i / 10);
    if (opts.throughput) metrics[opts.throughput] = round(1200 + (rnd() - 0.5) * 150 + (i < 5 ? -600 : 0), 2);
    if (opts.accuracy) metrics.accuracy = round(Math.min(0.99, 0.1 + 0.85 * (1 - Math.exp(-i / (points / 4)))), 4);
    history.push({ iteration: i, time: round(started + i * 3, 3), metrics });
  }
  const last = history.length ? history[history.length - 1].metrics : {};
  const workers = [];
  for (let r = 0; r < opts.workers; r++) {
    workers.push({ rank: r, node_id: r % 2 ? NODE2 : HEAD, pid: 30000 + r * 7 + points, gpu_ids: opts.gpu ? [r % 2] : [] });
  }
  const checkpoints = [];
  for (let i = Math.floor(points / 5); i <= points && points >= 5; i += Math.floor(points / 5)) {
    checkpoints.push({ path: `/home/me/gantry_results/${name}/checkpoint_${String(i).padStart(6, '0')}`, iteration: i, metrics: history[i - 1].metrics });
  }
  return {
    kind: 'train',
    name,
    storage_path: `/home/me/gantry_results/${name}`,
    state,
    started: round(started, 3),
    updated: round(state === 'running' ? START : started + points * 3, 3),
    job_id: JOB1,
    num_workers: opts.workers,
    use_gpu: !!opts.gpu,
    failures: opts.failures || 0,
    workers,
    iterations: points,
    samples_per_second: opts.throughput ? last[opts.throughput] : null,
    last_metrics: last,
    metric_names: Object.keys(last),
    history,
    checkpoints,
    error: opts.error || null,
  };
}
const trainRuns = [
  trainRun('mlp', 'running', 300, { workers: 2, gpu: true, throughput: 'samples_per_second', accuracy: true }),
  trainRun('resnet-small', 'finished', 120, { workers: 4, gpu: true, throughput: 'throughput', val: true }),
  trainRun('broken-run', 'failed', 12, { workers: 2, failures: 3, error: 'worker rank 1 died: std::bad_alloc (3 restarts, giving up)' }),
];
const trainSummary = (r) => {
  const { history, checkpoints, ...rest } = r;
  return rest;
};

// ---- Tune experiments ----------------------------------------------------------------------------

function tuneExperiment(name, n, metric, mode, state) {
  const trials = [];
  const rungs = [1, 3, 9, 27, 81, 100];
  for (let i = 0; i < n; i++) {
    const lr = round(10 ** (-5 + rnd() * 4), 7);
    const config = {
      lr,
      batch_size: pick([32, 64, 128, 256]),
      layers: 1 + Math.floor(rnd() * 6),
      optimizer: pick(['adam', 'sgd', 'adamw']),
      dropout: round(rnd() * 0.5, 3),
      model: { width: pick([64, 128, 256, 512]), activation: pick(['relu', 'gelu']) },
    };
    // ASHA-like: most trials stop at a low rung.
    const q = rnd();
    let iters = q < 0.5 ? rungs[0] : q < 0.75 ? rungs[1] : q < 0.88 ? rungs[2] : q < 0.95 ? rungs[3] : q < 0.985 ? rungs[4] : rungs[5];
    let status = 'TERMINATED';
    let error = null;
    if (i >= n - 6 && state === 'running') {
      status = 'RUNNING';
      iters = 5 + (i % 20);
    } else if (i >= n - 12 && state === 'running') {
      status = 'PENDING';
      iters = 0;
    } else if (i % 97 === 13) {
      status = 'ERROR';
      error = 'trial process exited with code 134 (SIGABRT): CUDA error: out of memory';
      iters = Math.min(iters, 3);
    }
    const quality = Math.abs(Math.log10(lr) + 3) * 0.3 + (config.optimizer === 'sgd' ? 0.2 : 0) + rnd() * 0.2;
    const history = [];
    let best = null;
    for (let it = 1; it <= iters; it++) {
      let v = quality + 1.8 * Math.exp(-it / 12) + (rnd() - 0.5) * 0.03;
      if (mode === 'max') v = 1 - v / 3;
      v = round(v, 5);
      history.push([it, v]);
      if (best === null || (mode === 'min' ? v < best : v > best)) best = v;
    }
    const lastV = history.length ? history[history.length - 1][1] : null;
    const last = history.length ? { [metric]: lastV, accuracy: round(Math.max(0, 1 - lastV / 3), 4), training_iteration: iters } : {};
    trials.push({
      trial_id: name === 'exp' ? 't' + String(i + 1).padStart(4, '0') : `${name}_${String(i).padStart(5, '0')}`,
      status,
      config,
      iterations: iters,
      last,
      best,
      node_id: i % 3 ? HEAD : NODE2,
      error,
      history,
    });
  }
  const counts = { PENDING: 0, RUNNING: 0, PAUSED: 0, TERMINATED: 0, ERROR: 0 };
  for (const t of trials) counts[t.status]++;
  let best = null;
  for (const t of trials) {
    if (t.best === null) continue;
    if (!best || (mode === 'min' ? t.best < best.value : t.best > best.value)) best = { trial_id: t.trial_id, value: t.best, config: t.config };
  }
  return {
    kind: 'tune',
    name,
    path: `/home/me/gantry_results/${name}`,
    state,
    started: round(START - 5000, 3),
    updated: round(state === 'running' ? START : START - 600, 3),
    job_id: JOB2,
    metric,
    mode,
    searcher: name === 'exp' ? 'TPESearcher' : 'BasicVariantGenerator',
    scheduler: name === 'exp' ? 'AsyncHyperBandScheduler' : 'FIFOScheduler',
    counts,
    best,
    trials,
  };
}
const tuneExps = [tuneExperiment('exp', 1000, 'loss', 'min', 'running'), tuneExperiment('small-exp', 8, 'score', 'max', 'finished')];
const tuneSummary = (x) => {
  const { trials, ...rest } = x;
  return rest;
};

// ---- cluster overview ------------------------------------------------------------------------------

function cluster() {
  const ns = nodes();
  const total = {};
  const used = {};
  for (const n of ns) {
    for (const [k, v] of Object.entries(n.resources.total)) {
      total[k] = (total[k] || 0) + v;
      used[k] = (used[k] || 0) + v - (n.resources.available[k] || 0);
    }
  }
  const actorCounts = { PENDING: 0, ALIVE: 0, RESTARTING: 0, DEAD: 0 };
  for (const a of actors) actorCounts[a.state] = (actorCounts[a.state] || 0) + 1;
  const t = tasks();
  const sum = (k) => t.functions.reduce((s, f) => s + f[k], 0);
  return {
    head_address: '10.0.0.11:6379',
    version: '0.1.0',
    time: round(now(), 3),
    nodes: { alive: ns.filter((n) => n.alive).length, dead: ns.filter((n) => !n.alive).length },
    resources: { total, used },
    object_store: {
      used_bytes: ns.reduce((s, n) => s + n.object_store.used_bytes, 0),
      capacity_bytes: ns.reduce((s, n) => s + n.object_store.capacity_bytes, 0),
      objects: ns.reduce((s, n) => s + n.object_store.objects, 0),
    },
    tasks: { pending: sum('pending'), running: sum('running'), finished: sum('finished'), failed: sum('failed') },
    actors: actorCounts,
    jobs: { running: jobs.filter((j) => j.status === 'RUNNING').length, finished: jobs.filter((j) => j.status !== 'RUNNING').length },
    recent_errors: [
      { time: round(START - 30, 3), kind: 'task', what: failures[0].name, message: failures[0].message, node_id: failures[0].node_id },
      { time: round(START - 200, 3), kind: 'actor', what: 'Counter', message: actors[actors.length - 2].death_cause, node_id: NODE2 },
      { time: round(START - 900, 3), kind: 'job', what: jobs[2].job_id, message: 'exited with code 3', node_id: HEAD },
      { time: round(START - 4000, 3), kind: 'node', what: 'cpu-box-03', message: 'node missed 10 heartbeats and was marked dead', node_id: hex(32) },
    ],
  };
}

// ---- HTTP ----------------------------------------------------------------------------------------------

function send(res, status, body, type = 'application/json') {
  const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(data);
}
const json = (res, body, status = 200) => send(res, status, body);
const fail = (res, status, error) => send(res, status, { error });

function readBody(req) {
  return new Promise((resolve) => {
    let s = '';
    req.on('data', (c) => (s += c));
    req.on('end', () => resolve(s));
  });
}

function serveDist(res, name, type) {
  try {
    send(res, 200, readFileSync(join(DIST, name)), type);
  } catch (e) {
    fail(res, 404, `no dist/${name}: run ./build.sh first`);
  }
}

function logsEndpoint(res, q) {
  const node = q.get('node');
  if (!node) return fail(res, 400, 'node= is required');
  if (node !== HEAD && node !== NODE2) return fail(res, 404, `no node ${node}`);
  const files = logFiles(node);
  let name = q.get('file');
  if (!name && q.get('worker')) name = `worker-${q.get('worker')}.out`;
  if (!name) {
    return json(res, {
      files: files.map((f) => {
        const size = Buffer.byteLength(fileText(node, f));
        return { name: f.name, size, modified: round(f.growth ? now() : T0 + 100, 3), pid: f.pid, kind: f.kind };
      }),
    });
  }
  const f = files.find((x) => x.name === name);
  if (!f) return fail(res, 404, `no log file ${name} on node ${node.slice(0, 8)}`);
  const buf = Buffer.from(fileText(node, f));
  if (q.get('follow') === '1') {
    // text/event-stream: one "data: {json chunk}" event now, then one a second as the file grows.
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
    let off = q.get('offset') !== null ? Math.max(0, Number(q.get('offset')) || 0) : Math.max(0, buf.length - 4096);
    const push = () => {
      const b = Buffer.from(fileText(node, f));
      if (b.length > off) {
        res.write(`data: ${JSON.stringify({ text: b.subarray(off).toString(), offset: off, next_offset: b.length, size: b.length })}\n\n`);
        off = b.length;
      }
    };
    push();
    const timer = setInterval(push, 1000);
    res.on('close', () => clearInterval(timer));
    return undefined;
  }
  if (q.get('offset') !== null) {
    const off = Math.max(0, Math.min(buf.length, Number(q.get('offset')) || 0));
    const end = Math.min(buf.length, off + 256 * 1024);
    return json(res, { text: buf.subarray(off, end).toString(), offset: off, next_offset: end, size: buf.length });
  }
  const tail = Math.max(1, Number(q.get('tail')) || 1000);
  let off = buf.length;
  let seen = 0;
  while (off > 0) {
    const i = buf.lastIndexOf(10, off - 2);
    if (i < 0) {
      off = 0;
      break;
    }
    off = i + 1;
    if (++seen >= tail) break;
  }
  return json(res, { text: buf.subarray(off).toString(), offset: off, next_offset: buf.length, size: buf.length });
}

async function api(req, res, path, q) {
  const m = (re) => re.exec(path);
  let g;
  if (req.method === 'GET') {
    if (path === '/api/cluster') return json(res, cluster());
    if (path === '/api/nodes') return json(res, { nodes: nodes() });
    if (path === '/api/actors') return json(res, { actors });
    if (path === '/api/tasks') return json(res, tasks());
    if (path === '/api/objects') {
      return json(res, {
        by_node: [{ node_id: HEAD, objects: 1342, bytes: 1.5 * GiB }, { node_id: NODE2, objects: 88, bytes: 0.1 * GiB }],
        by_owner: [
          { owner: 'driver', pid: drivers[0].start_time | 0, objects: 900, bytes: 1.2 * GiB, by_location: { INLINE: 700, SHARED_MEMORY: 200 } },
          { owner: actors[0].actor_id, pid: actors[0].pid, objects: 530, bytes: 0.4 * GiB, by_location: { INLINE: 30, SHARED_MEMORY: 500 } },
        ],
        truncated: false,
      });
    }
    if (path === '/api/placement_groups') return json(res, { placement_groups: placementGroups });
    if (path === '/api/jobs') return json(res, { jobs: jobs.map(publicJob), drivers });
    if ((g = m(/^\/api\/jobs\/([^/]+)$/))) {
      const j = jobs.find((x) => x.job_id === decodeURIComponent(g[1]));
      return j ? json(res, publicJob(j)) : fail(res, 404, `no job ${g[1]}`);
    }
    if ((g = m(/^\/api\/jobs\/([^/]+)\/logs$/))) {
      const j = jobs.find((x) => x.job_id === decodeURIComponent(g[1]));
      if (!j) return fail(res, 404, `no job ${g[1]}`);
      const buf = Buffer.from(jobLog(j));
      const off = Math.max(0, Math.min(buf.length, Number(q.get('offset')) || 0));
      const end = Math.min(buf.length, off + 64 * 1024);
      return json(res, { text: buf.subarray(off, end).toString(), next_offset: end, ended: j.status !== 'RUNNING' && end >= buf.length });
    }
    if (path === '/api/logs') return logsEndpoint(res, q);
    if (path === '/api/stacks') {
      const pid = q.get('pid');
      if (!q.get('node') || !pid) return fail(res, 400, 'node= and pid= are required');
      let text = `PID ${pid} - process\n`;
      for (let t = 0; t < 3; t++) {
        text += `TID ${Number(pid) + t}:\n#0  0x00007f2c1a2e5d7f in __futex_abstimed_wait_common () from /lib/x86_64-linux-gnu/libc.so.6\n` +
          `#1  0x00005611d2c4a1b0 in gantry::core::TaskExecutor::WaitForWork() at core/src/worker/executor.cc:214\n` +
          `#2  0x00005611d2c4b9e2 in gantry::core::Worker::RunLoop() at core/src/worker/worker.cc:88\n` +
          `#3  0x00005611d2b1f0c4 in main at core/src/worker/worker_main.cc:41\n\n`;
      }
      return json(res, { pid: Number(pid), tool: 'eu-stack', text });
    }
    if (path === '/api/timeline') {
      return json(res, runningTasks.slice(0, 10).map((t, i) => ({ name: t.name, cat: 'task', ph: 'X', ts: (t.started - T0) * 1e6, dur: 1e6 * (i + 1), pid: t.node_id.slice(0, 8), tid: t.pid })));
    }
    if (path === '/api/train') return json(res, { runs: trainRuns.map(trainSummary) });
    if ((g = m(/^\/api\/train\/([^/]+)$/))) {
      const r = trainRuns.find((x) => x.name === decodeURIComponent(g[1]));
      return r ? json(res, r) : fail(res, 404, `no Train run named ${decodeURIComponent(g[1])}`);
    }
    if (path === '/api/tune') return json(res, { experiments: tuneExps.map(tuneSummary) });
    if ((g = m(/^\/api\/tune\/([^/]+)$/))) {
      const x = tuneExps.find((e) => e.name === decodeURIComponent(g[1]));
      return x ? json(res, x) : fail(res, 404, `no Tune experiment named ${decodeURIComponent(g[1])}`);
    }
  }
  if (req.method === 'POST') {
    const text = await readBody(req);
    console.log(`POST ${path} ${text}`);
    let body = {};
    try {
      body = text ? JSON.parse(text) : {};
    } catch (e) {
      return fail(res, 400, 'the body is not JSON');
    }
    if ((g = m(/^\/api\/actors\/([^/]+)\/kill$/))) {
      const a = actors.find((x) => x.actor_id === g[1]);
      if (!a) return fail(res, 404, `no actor ${g[1]}`);
      if (body.no_restart !== true) return fail(res, 400, 'expected {"no_restart": true}');
      a.state = 'DEAD';
      a.death_cause = 'killed from the dashboard';
      a.calls.running = 0;
      return json(res, { killed: a.actor_id });
    }
    if (path === '/api/jobs') {
      if (!Array.isArray(body.entrypoint) || !body.entrypoint.length) return fail(res, 400, 'entrypoint must be a non-empty list of strings');
      const j = addJob(body.entrypoint.join(' '), 'RUNNING', 0, null, null, 'running');
      j._wd = body.working_dir || null;
      return json(res, { job_id: j.job_id }, 201);
    }
    if ((g = m(/^\/api\/jobs\/([^/]+)\/stop$/))) {
      const j = jobs.find((x) => x.job_id === g[1]);
      if (!j) return fail(res, 404, `no job ${g[1]}`);
      if (j.status === 'RUNNING') {
        j._lines = 30 + Math.floor((now() - j.start_time) * 2);
        j.status = 'STOPPED';
        j.end_time = round(now(), 3);
        j.exit_code = -15;
        j.message = 'stopped by the user';
      }
      return json(res, publicJob(j));
    }
  }
  return fail(res, 404, `no such endpoint: ${req.method} ${path}`);
}

function publicJob(j) {
  const out = {};
  for (const [k, v] of Object.entries(j)) if (!k.startsWith('_')) out[k] = v;
  return out;
}

const LOGIN_PAGE = `<!doctype html><meta charset="utf-8"><title>login</title>
<form method="post" action="/login" style="font:14px system-ui;margin:40px">
<p>Fake login: any token works.</p><input name="token" placeholder="token"> <button>Log in</button></form>`;

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const path = url.pathname;
  try {
    if (path === '/login') {
      if (req.method === 'POST') {
        await readBody(req);
        res.writeHead(303, { 'Set-Cookie': `${COOKIE}; Path=/; HttpOnly; SameSite=Strict`, Location: '/' });
        return res.end();
      }
      return send(res, 200, LOGIN_PAGE, 'text/html; charset=utf-8');
    }
    if (path === '/dev/fail' && req.method === 'POST') {
      const re = url.searchParams.get('re') || '';
      FAIL = re ? new RegExp(re) : null;
      return json(res, { fail: re });
    }
    const authed = !AUTH || (req.headers.cookie || '').includes(COOKIE) || /^Bearer .+/.test(req.headers.authorization || '');
    if (path === '/' || path === '/index.html') return serveDist(res, 'index.html', 'text/html; charset=utf-8');
    if (path === '/assets/app.js') return serveDist(res, 'app.js', 'text/javascript; charset=utf-8');
    if (path === '/assets/app.css') return serveDist(res, 'app.css', 'text/css; charset=utf-8');
    if (path === '/metrics') {
      if (!authed) return fail(res, 401, 'missing or wrong token');
      return send(res, 200, `# TYPE gantry_nodes_alive gauge\ngantry_nodes_alive 2\n# TYPE gantry_tasks_finished_total counter\ngantry_tasks_finished_total ${tasks().functions.reduce((s, f) => s + f.finished, 0)}\n`, 'text/plain; version=0.0.4');
    }
    if (path.startsWith('/api/')) {
      if (!authed) return fail(res, 401, 'missing or wrong token');
      if (FAIL && FAIL.test(path)) return fail(res, 500, `injected failure for ${path} (FAKE_FAIL)`);
      return await api(req, res, path, url.searchParams);
    }
    return fail(res, 404, `not found: ${path}`);
  } catch (e) {
    return fail(res, 500, String(e && e.stack ? e.stack : e));
  }
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(`fake gantry dashboard API on http://127.0.0.1:${PORT}/ (serving ${DIST})`);
});
