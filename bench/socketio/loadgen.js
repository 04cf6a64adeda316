// The Socket.IO load generator of scripts/bench fanout: the workload of fanout_bench,
// measured the same way, against server.js.
//
//   node loadgen.js --url=http://127.0.0.1:3000 --redis=redis://127.0.0.1:6379 \
//       --server_pid=1234 --subscribers=10000 --sessions=1000 --rate=2000 --duration_s=20
//   ... {"delivered_per_s":..., "p50_ms":..., "p99_ms":..., ...}   (last line, stdout)
//
// 1. reads the server's RSS, opens `subscribers` socket.io-client connections
//    (WebSocket only; subscriber k joins room s<k % sessions>), at most 256 connecting
//    at a time;
// 2. forks publisher.js, publishes one warm-up event per room and waits until every
//    client has it; after 2 s of quiet reads the server's RSS again (per subscriber);
// 3. publishes at `rate` events/s for `duration_s` and records every delivery:
//    latency = receive time - publish time (CLOCK_MONOTONIC of one machine), in the
//    same histogram buckets as fanout_bench; delivered_per_s counts deliveries received
//    within the window; the server's CPU (utime+stime from /proc) over the same time;
// 4. searches like fanout_bench: `search_steps` runs of `search_step_s` that bracket
//    the highest rate the server keeps up with (all delivered, p99 <= target_p99_ms,
//    50 by default):
//    doubling while it keeps up, halving while it does not, then bisecting the bracket;
//    the highest rate kept up with is max_sustained_per_s.
// With --sockets=N the subscribers share N sockets instead (the multiplexed workload):
// each socket joins the rooms of its subscribers and counts a room's message once per
// subscriber of that room it carries.
// Progress goes to stderr; the JSON line to stdout.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { fork } = require('node:child_process');
const { io } = require('socket.io-client');

const { flag } = require('./flags');

const url = flag('url', 'http://127.0.0.1:3000');
const redisUrl = flag('redis', 'redis://127.0.0.1:6379');
const serverPid = Number(flag('server_pid', '0'));
const redisPid = Number(flag('redis_pid', '0'));
const subscribers = Number(flag('subscribers', '10000'));
const sessions = Math.min(Number(flag('sessions', '1000')), subscribers);
const rate = Number(flag('rate', '2000'));
const durationS = Number(flag('duration_s', '20'));
const textBytes = Number(flag('text_bytes', '32'));
const connectTimeoutS = Number(flag('connect_timeout_s', '90'));
const searchSteps = Number(flag('search_steps', '3'));
const searchStepS = Number(flag('search_step_s', '5'));
const targetP99Ms = Number(flag('target_p99_ms', '50'));
// 0: a socket per subscriber. N: N sockets, subscriber k on socket k % N, each socket
// joined to the rooms of its subscribers; a room message counts once per subscriber of
// that room on the socket (Socket.IO sends it once per socket; the client fans it out).
const socketCount = Number(flag('sockets', '0'));

const log = (msg) => console.error(`loadgen: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowNs = () => Number(process.hrtime.bigint());

// --- /proc readings ----------------------------------------------------------------
function rssKib(pid) {
  if (!pid) return 0;
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}
const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux.
function cpuTicks(pid) {
  if (!pid) return 0;
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // Fields 14 and 15: utime, stime.
}

// The whole machine's busy and stolen ticks (/proc/stat), to show what else ran.
function machineTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number);
  // cpu user nice system idle iowait irq softirq steal
  return { busy: f[1] + f[2] + f[3] + f[6] + f[7], steal: f[8] };
}

// --- Latency histogram: the buckets of fanout_bench's LatencyHistogram ---------------
class Histogram {
  constructor() { this.buckets = new Float64Array(2000 + 1980 + 1000); this.count = 0; }
  record(us) {
    const v = Math.max(0, Math.floor(us));
    let i;
    if (v < 10000) i = Math.floor(v / 5);
    else if (v < 1000000) i = 2000 + Math.floor((v - 10000) / 500);
    else i = 3980 + Math.min(Math.floor((v - 1000000) / 10000), 999);
    this.buckets[i] += 1;
    this.count += 1;
  }
  static upperUs(i) {
    if (i < 2000) return (i + 1) * 5;
    if (i < 3980) return 10000 + (i - 2000 + 1) * 500;
    return 1000000 + (i - 3980 + 1) * 10000;
  }
  quantileMs(q) {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.floor(q * this.count));
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i += 1) {
      seen += this.buckets[i];
      if (seen >= rank) return Histogram.upperUs(i) / 1000;
    }
    return Histogram.upperUs(this.buckets.length - 1) / 1000;
  }
}

const phases = [];
function phase(p) {
  if (!phases[p]) {
    phases[p] = { delivered: 0, inWindow: 0, windowEndNs: Infinity, hist: new Histogram() };
  }
  return phases[p];
}
let warm = 0;
let orderErrors = 0;
let disconnected = 0;
const disconnectReasons = {};

// --- Clients -------------------------------------------------------------------------
// A WebSocket-only connection of its own, never reconnecting (a drop is counted).
function connect(query) {
  return io(url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    timeout: connectTimeoutS * 1000,
    query,
  });
}

function openClient(k) {
  return new Promise((resolve) => {
    const socket = connect({ room: `s${k % sessions}` });
    let lastSeq = 0;
    socket.on('ev', (ev) => {
      const now = nowNs();
      if (lastSeq !== 0 && ev.q !== lastSeq + 1) orderErrors += 1;
      lastSeq = ev.q;
      if (ev.p === 0) { warm += 1; return; }
      const stats = phase(ev.p);
      stats.hist.record((now - ev.t) / 1000);
      stats.delivered += 1;
      if (now <= stats.windowEndNs) stats.inWindow += 1;
    });
    socket.on('connect', () => resolve(socket));
    socket.on('connect_error', (err) => { log(`connect_error: ${err.message}`); resolve(null); });
    socket.on('disconnect', (reason) => {
      disconnected += 1;
      disconnectReasons[reason] = (disconnectReasons[reason] || 0) + 1;
    });
  });
}

// A socket carrying the subscribers `ks`: one room join for all, each room's message
// recorded once per subscriber of it, with each subscriber's own order check.
function openMuxClient(ks) {
  return new Promise((resolve) => {
    const socket = connect({});
    const byRoom = new Map();  // room -> [{lastSeq}]
    for (const k of ks) {
      const room = `s${k % sessions}`;
      if (!byRoom.has(room)) byRoom.set(room, []);
      byRoom.get(room).push({ lastSeq: 0 });
    }
    socket.on('ev', (ev) => {
      const now = nowNs();
      const subs = byRoom.get(ev.s);
      if (!subs) return;
      for (const sub of subs) {
        if (sub.lastSeq !== 0 && ev.q !== sub.lastSeq + 1) orderErrors += 1;
        sub.lastSeq = ev.q;
        if (ev.p === 0) { warm += 1; continue; }
        const stats = phase(ev.p);
        stats.hist.record((now - ev.t) / 1000);
        stats.delivered += 1;
        if (now <= stats.windowEndNs) stats.inWindow += 1;
      }
    });
    socket.on('connect', () => socket.emit('join', [...byRoom.keys()], () => resolve(socket)));
    socket.on('connect_error', (err) => { log(`connect_error: ${err.message}`); resolve(null); });
    socket.on('disconnect', (reason) => {
      disconnected += ks.length;
      disconnectReasons[reason] = (disconnectReasons[reason] || 0) + ks.length;
    });
  });
}

async function openMux() {
  const groups = Array.from({ length: socketCount }, () => []);
  for (let k = 0; k < subscribers; k += 1) groups[k % socketCount].push(k);
  const sockets = await Promise.all(groups.map(openMuxClient));
  // Counted in subscribers, as the warm-up and the owed deliveries are.
  return { sockets, connected: sockets.reduce((n, s, i) => n + (s && s.connected ? groups[i].length : 0), 0) };
}

async function openAll() {
  const sockets = new Array(subscribers).fill(null);
  let next = 0;
  const deadline = Date.now() + connectTimeoutS * 1000;
  const worker = async () => {
    while (next < subscribers && Date.now() < deadline) {
      const k = next;
      next += 1;
      sockets[k] = await openClient(k);
    }
  };
  await Promise.all(Array.from({ length: 256 }, worker));
  return sockets;
}

// --- Publisher -----------------------------------------------------------------------
function startPublisher() {
  const child = fork(path.join(__dirname, 'publisher.js'),
    [`--redis=${redisUrl}`, `--sessions=${sessions}`, `--text_bytes=${textBytes}`],
    { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let waiting = null;
  child.on('message', (msg) => { if (waiting) { const w = waiting; waiting = null; w(msg); } });
  const request = (msg) => new Promise((resolve) => {
    waiting = resolve;
    if (msg) child.send(msg);
  });
  return { child, request };
}

// One measured phase at `phaseRate` events/s for `seconds`; CPU over the same wall time.
async function runPhase(publisher, p, phaseRate, seconds, live) {
  const stats = phase(p);
  const startNs = nowNs();
  stats.windowEndNs = startNs + seconds * 1e9;
  const serverTicks = cpuTicks(serverPid);
  const redisTicks = cpuTicks(redisPid);
  const pubTicks = cpuTicks(publisher.child.pid);
  const selfCpu = process.cpuUsage();
  const machineBefore = machineTicks();
  const reply = await publisher.request({
    cmd: 'paced', phase: p, rate: phaseRate, duration_ms: seconds * 1000,
  });
  const wallS = (nowNs() - startNs) / 1e9;
  const self = process.cpuUsage(selfCpu);
  const machineAfter = machineTicks();
  const result = {
    machine_cpu: (machineAfter.busy - machineBefore.busy) / CLK_TCK / wallS,
    steal_cpu: (machineAfter.steal - machineBefore.steal) / CLK_TCK / wallS,
    rate: phaseRate,
    published_per_s: reply.published / seconds,
    expected: Math.floor((reply.published * live) / sessions),
    server_cpu: (cpuTicks(serverPid) - serverTicks) / CLK_TCK / wallS,
    redis_cpu: (cpuTicks(redisPid) - redisTicks) / CLK_TCK / wallS,
    loadgen_cpu: (self.user + self.system) / 1e6 / wallS,
    publisher_cpu: (cpuTicks(publisher.child.pid) - pubTicks) / CLK_TCK / wallS,
  };
  // Stragglers: wait (bounded) until all arrived or none came for a second.
  const drainDeadline = Date.now() + 10000;
  let seen = -1;
  let lastProgress = Date.now();
  while (stats.delivered < result.expected && Date.now() < drainDeadline &&
    Date.now() - lastProgress < 1000) {
    if (stats.delivered !== seen) { seen = stats.delivered; lastProgress = Date.now(); }
    await sleep(20);
  }
  result.delivered_per_s = stats.inWindow / seconds;
  result.delivered_ratio = result.expected > 0 ? stats.delivered / result.expected : 0;
  result.p50_ms = stats.hist.quantileMs(0.5);
  result.p99_ms = stats.hist.quantileMs(0.99);
  result.p999_ms = stats.hist.quantileMs(0.999);
  result.max_ms = stats.hist.quantileMs(1.0);
  return result;
}

function describe(r) {
  return `rate ${r.rate} ev/s: published ${r.published_per_s.toFixed(0)}/s, delivered ` +
    `${r.delivered_per_s.toFixed(0)}/s (${(100 * r.delivered_ratio).toFixed(2)}% of ` +
    `${r.expected} owed), latency p50 ${r.p50_ms} p99 ${r.p99_ms} p999 ${r.p999_ms} ` +
    `max ${r.max_ms} ms; CPU server ${r.server_cpu.toFixed(2)}, redis ${r.redis_cpu.toFixed(2)}, ` +
    `loadgen ${r.loadgen_cpu.toFixed(2)}, publisher ${r.publisher_cpu.toFixed(2)}, whole machine ` +
    `${r.machine_cpu.toFixed(2)} (+${r.steal_cpu.toFixed(2)} stolen) cores`;
}

async function main() {
  const started = Date.now();
  const rssBefore = rssKib(serverPid);
  let sockets;
  let connected;
  if (socketCount > 0) {
    ({ sockets, connected } = await openMux());
  } else {
    sockets = await openAll();
    connected = sockets.filter((s) => s !== null && s.connected).length;
  }
  log(`${connected} of ${subscribers} subscribers connected over ${sockets.length} sockets in ` +
    `${((Date.now() - started) / 1000).toFixed(1)} s`);

  const publisher = startPublisher();
  await publisher.request(null); // {ready}
  await publisher.request({ cmd: 'round', phase: 0 });
  const warmDeadline = Date.now() + 60000;
  while (warm < connected && Date.now() < warmDeadline) await sleep(50);
  const live = warm;
  await sleep(2000);
  const rssIdle = rssKib(serverPid);
  log(`${live} clients live; server RSS ${rssBefore} KiB before, ${rssIdle} KiB idle`);

  const mainRun = await runPhase(publisher, 1, rate, durationS, live);
  log(describe(mainRun));

  // Search, as fanout_bench does: bracket the highest rate the server keeps up with
  // (everything delivered, p99 <= target) by doubling or halving, then bisect.
  const sustained = (r) => r.delivered_ratio >= 0.99 && r.published_per_s >= 0.95 * r.rate &&
    r.p99_ms <= targetP99Ms;
  const mainSustained = sustained(mainRun);
  let best = mainSustained ? mainRun.delivered_per_s : 0;
  let keptUp = mainSustained ? rate : 0;  // Highest rate kept up with so far.
  let fellBehind = mainSustained ? Infinity : rate;  // Lowest rate that was too much.
  // While nothing was kept up with, halving goes on past search_steps (up to 8 more), so a
  // slow machine still yields a rate to compare rather than none.
  for (let step = 0; step < searchSteps || (keptUp === 0 && step < searchSteps + 8); step += 1) {
    let stepRate = (keptUp + fellBehind) / 2;
    if (fellBehind === Infinity) stepRate = keptUp * 2;
    if (keptUp === 0) stepRate = fellBehind / 2;
    if (stepRate < 1) break;
    const r = await runPhase(publisher, step + 2, stepRate, searchStepS, live);
    log(`search: ${describe(r)}`);
    if (sustained(r)) {
      best = Math.max(best, r.delivered_per_s);
      keptUp = stepRate;
    } else {
      fellBehind = stepRate;
    }
  }

  const result = {
    subscribers, sessions, sockets: sockets.length, connected, live, rate, duration_s: durationS,
    published_per_s: mainRun.published_per_s,
    delivered_per_s: mainRun.delivered_per_s,
    delivered_ratio: mainRun.delivered_ratio,
    p50_ms: mainRun.p50_ms, p99_ms: mainRun.p99_ms, p999_ms: mainRun.p999_ms, max_ms: mainRun.max_ms,
    rss_per_sub_kib: live > 0 ? (rssIdle - rssBefore) / subscribers : 0,
    server_cpu: mainRun.server_cpu, redis_cpu: mainRun.redis_cpu, loadgen_cpu: mainRun.loadgen_cpu,
    publisher_cpu: mainRun.publisher_cpu, machine_cpu: mainRun.machine_cpu,
    max_sustained_per_s: best,
    order_errors: orderErrors, disconnected, disconnect_reasons: { ...disconnectReasons },
  };
  publisher.child.send({ cmd: 'exit' });
  for (const socket of sockets) if (socket) socket.disconnect();
  console.log(JSON.stringify(result));
  setTimeout(() => process.exit(0), 500).unref();
  publisher.child.on('exit', () => process.exit(0));
}

main().catch((err) => {
  console.error(`loadgen: ${err.stack || err}`);
  process.exit(1);
});
