// The BullMQ side of jetfn's benchmarks, driven by `jetfn-bench` (tests/bench). It runs the workload jetfn's
// rows run, on a Redis the caller started: the same ~1 KiB CloudEvent as job data, the job id set to the event id
// (BullMQ's counterpart of Nats-Msg-Id dedup), a no-op processor. It prints one JSON object on stdout; progress
// goes to stderr. Durability is the caller's Redis configuration (appendfsync), not this script's.
//
//   node bench.mjs --port 6390 --payload event.json --jobs 20000 --runs 3 --rates 1000,5000 --secs 5
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Queue, Worker } from 'bullmq';

const args = parseArgs(process.argv.slice(2));
const connection = { host: '127.0.0.1', port: Number(args.port), maxRetriesPerRequest: null };
const template = JSON.parse(readFileSync(args.payload, 'utf8'));
const jobs = Number(args.jobs ?? 20000);
const runs = Number(args.runs ?? 3);
const rates = String(args.rates ?? '1000,5000').split(',').map(Number);
const secs = Number(args.secs ?? 5);
const warmupMs = Number(args['warmup-ms'] ?? 500);
const concurrencies = String(args.concurrency ?? '1,10,100').split(',').map(Number);
// Completed jobs are removed, as production queues usually configure it; keeping them would only slow BullMQ down.
// attempts/backoff mirror the welcome consumer's max_deliver 6 with backoff.
const jobOpts = { removeOnComplete: true, removeOnFail: 1000, attempts: 6, backoff: { type: 'exponential', delay: 5000 } };

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  return out;
}

function log(...parts) {
  process.stderr.write(`[bullmq] ${parts.join(' ')}\n`);
}

function nowNs() {
  // Epoch nanoseconds as a float: ~256 ns resolution at today's epoch, plenty for millisecond latencies.
  return Math.round((performance.timeOrigin + performance.now()) * 1e6);
}

function event() {
  const id = randomUUID();
  return { id, data: { ...template, id, benchsentns: nowNs() } };
}

function quantiles(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1], count: sorted.length };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function fresh(name) {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  await queue.obliterate({ force: true });
  return queue;
}

async function fill(queue, count) {
  const chunk = 1000;
  const started = performance.now();
  for (let done = 0; done < count; done += chunk) {
    const batch = [];
    for (let i = 0; i < Math.min(chunk, count - done); i++) {
      const { id, data } = event();
      batch.push({ name: 'users.registered', data, opts: { ...jobOpts, jobId: id } });
    }
    await queue.addBulk(batch);
  }
  return count / ((performance.now() - started) / 1000);
}

async function addOneAtATime(queue, count) {
  const latencies = [];
  for (let i = 0; i < count; i++) {
    const { id, data } = event();
    const started = performance.now();
    await queue.add('users.registered', data, { ...jobOpts, jobId: id });
    latencies.push(performance.now() - started);
  }
  return quantiles(latencies);
}

async function drainWith(queueName, count, concurrency) {
  let completed = 0;
  let first = 0;
  let last = 0;
  let resolve;
  const finished = new Promise((r) => { resolve = r; });
  const worker = new Worker(queueName, async () => {
    if (first === 0) first = performance.now();
  }, { connection, concurrency, autorun: false });
  worker.on('completed', () => {
    completed += 1;
    if (completed === count) {
      last = performance.now();
      resolve();
    }
  });
  worker.on('error', (err) => log('worker error', err.message));
  worker.run();
  const timeout = setTimeout(() => resolve(), 120_000);
  await finished;
  clearTimeout(timeout);
  await worker.close();
  if (completed < count) throw new Error(`worker completed ${completed} of ${count} jobs`);
  return (count - 1) / ((last - first) / 1000);
}

async function endToEnd(rate) {
  const name = `bench-e2e-${rate}`;
  const queue = await fresh(name);
  const latencies = [];
  let started = 0;
  const worker = new Worker(name, async (job) => {
    const sentNs = job.data.benchsentns;
    if (sentNs / 1e6 - performance.timeOrigin - started >= warmupMs) {
      latencies.push((nowNs() - sentNs) / 1e6);
    }
  }, { connection, concurrency: 10 });
  worker.on('error', (err) => log('worker error', err.message));
  await worker.waitUntilReady();
  const producer = new Queue(name, { connection });
  await producer.waitUntilReady();
  started = performance.now();
  let sent = 0;
  const pending = [];
  while (performance.now() - started < secs * 1000) {
    const due = Math.floor(((performance.now() - started) / 1000) * rate);
    while (sent < due) {
      const { id, data } = event();
      pending.push(producer.add('users.registered', data, { ...jobOpts, jobId: id }));
      sent += 1;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  const deadline = performance.now() + 10_000;
  while (performance.now() < deadline && (await queue.count()) > 0) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 100));
  await worker.close();
  await producer.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return { rate, sent, ...quantiles(latencies) };
}

async function main() {
  const result = { add_bulk_per_s: [], add_one: null, worker: {}, e2e: [] };
  for (const c of concurrencies) result.worker[c] = [];
  for (let run = 0; run < runs; run++) {
    for (const c of concurrencies) {
      const name = `bench-worker-${c}`;
      const queue = await fresh(name);
      // c=1 is slow; fewer jobs keep the run short without changing the rate.
      const count = c === 1 ? Math.max(1000, Math.floor(jobs / 4)) : jobs;
      const addRate = await fill(queue, count);
      result.add_bulk_per_s.push(addRate);
      const rate = await drainWith(name, count, c);
      result.worker[c].push(rate);
      log(`run ${run + 1}: addBulk ${addRate.toFixed(0)}/s, worker c=${c} ${rate.toFixed(0)} jobs/s`);
      await queue.obliterate({ force: true });
      await queue.close();
    }
  }
  {
    const queue = await fresh('bench-add-one');
    result.add_one = await addOneAtATime(queue, Math.min(1000, jobs));
    await queue.obliterate({ force: true });
    await queue.close();
  }
  for (const rate of rates) {
    const e2e = await endToEnd(rate);
    log(`e2e ${rate}/s: p50 ${e2e.p50.toFixed(2)} ms p99 ${e2e.p99.toFixed(2)} ms max ${e2e.max.toFixed(2)} ms`);
    result.e2e.push(e2e);
  }
  result.add_bulk_median_per_s = median(result.add_bulk_per_s);
  result.worker_median = Object.fromEntries(Object.entries(result.worker).map(([c, v]) => [c, median(v)]));
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().then(() => process.exit(0), (err) => {
  log('failed:', err.stack ?? err);
  process.exit(1);
});
