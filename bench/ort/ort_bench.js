// ONNX Runtime CPU baseline for make bench: care-engine-bench's measurement for an ONNX model.
// N InferenceSessions (one per worker thread, since onnxruntime-node runs a session's
// inference synchronously on the thread that calls it), each with T intra-op threads, run
// batches of one size at the same time for a fixed time; one JSON line per batch size.
//
//   node ort_bench.js --model care_s0.onnx --sessions 2 --threads 1 --batch_sizes 1,8 --seconds 5
//   node ort_bench.js --model care_s0.onnx --verify care_s0   (care_s0.input.f32 / care_s0.logits.f32)
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const ort = require('onnxruntime-node');

function parseArgs(argv) {
  const args = { sessions: 1, threads: 1, batch_sizes: '1,8', seconds: 5, warmup_runs: 3, height: 224, width: 224 };
  for (let i = 0; i < argv.length; ++i) {
    const m = /^--([a-z_]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument ${argv[i]}`);
    const value = m[2] !== undefined ? m[2] : argv[++i];
    if (value === undefined) throw new Error(`--${m[1]} needs a value`);
    args[m[1]] = value;
  }
  if (!args.model) throw new Error('--model is required');
  for (const k of ['sessions', 'threads', 'seconds', 'warmup_runs', 'height', 'width']) {
    args[k] = Number(args[k]);
    if (!(args[k] > 0) && !(k === 'warmup_runs' && args[k] === 0)) throw new Error(`--${k} must be positive`);
  }
  args.batch_sizes = String(args.batch_sizes).split(',').map(Number);
  return args;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.round((p / 100) * (sorted.length - 1)))];
}

function readFloats(path) {
  const buf = require('fs').readFileSync(path);
  return new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
}

// Runs the input bench/export_onnx.py wrote and compares with PyTorch's eager logits.
async function verify(args) {
  const session = await ort.InferenceSession.create(args.model, { intraOpNumThreads: args.threads });
  const input = readFloats(`${args.verify}.input.f32`);
  const expected = readFloats(`${args.verify}.logits.f32`);
  const batch = input.length / (3 * args.height * args.width);
  if (!Number.isInteger(batch)) throw new Error(`${args.verify}.input.f32 is not a whole batch of 3x${args.height}x${args.width}`);
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', input, [batch, 3, args.height, args.width]) });
  const got = out[session.outputNames[0]].data;
  if (got.length !== expected.length) throw new Error(`ONNX Runtime gave ${got.length} logits, PyTorch ${expected.length}`);
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < got.length; ++i) {
    maxDiff = Math.max(maxDiff, Math.abs(got[i] - expected[i]));
    maxRef = Math.max(maxRef, Math.abs(expected[i]));
  }
  const relative = maxDiff / maxRef;
  console.log(JSON.stringify({ verify: args.verify, max_abs_diff: maxDiff, max_rel_diff: relative }));
  if (!(relative <= 1e-4)) throw new Error(`ONNX Runtime differs from PyTorch: relative ${relative}`);
}

async function workerMain() {
  const { model, threads, height, width, warmup_runs: warmupRuns } = workerData;
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const inputName = session.inputNames[0];
  let feeds = null;
  parentPort.on('message', async (msg) => {
    if (msg.type === 'prepare') {
      const n = msg.batch * 3 * height * width;
      const data = new Float32Array(n);
      for (let i = 0; i < n; ++i) data[i] = Math.random() * 2 - 1;
      feeds = { [inputName]: new ort.Tensor('float32', data, [msg.batch, 3, height, width]) };
      for (let i = 0; i < warmupRuns; ++i) await session.run(feeds);
      parentPort.postMessage({ type: 'ready' });
    } else if (msg.type === 'go') {
      const times = [];
      const until = msg.until;
      // At least 3 batches, as care-engine-bench.
      while (Date.now() < until || times.length < 3) {
        const start = process.hrtime.bigint();
        await session.run(feeds);
        times.push(Number(process.hrtime.bigint() - start) / 1e6);
      }
      parentPort.postMessage({ type: 'done', times });
    } else if (msg.type === 'exit') {
      await session.release();
      process.exit(0);
    }
  });
  parentPort.postMessage({ type: 'loaded' });
}

function waitAll(workers, type) {
  return Promise.all(workers.map((w) => new Promise((resolve, reject) => {
    const onMessage = (msg) => {
      if (msg.type === type) {
        w.off('message', onMessage);
        resolve(msg);
      }
    };
    w.on('message', onMessage);
    w.once('error', reject);
  })));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.verify) return verify(args);
  const workers = [];
  for (let i = 0; i < args.sessions; ++i) {
    workers.push(new Worker(__filename, { workerData: { ...args } }));
  }
  await waitAll(workers, 'loaded');
  for (const batch of args.batch_sizes) {
    const ready = waitAll(workers, 'ready');
    workers.forEach((w) => w.postMessage({ type: 'prepare', batch }));
    await ready;
    const started = Date.now();
    const done = waitAll(workers, 'done');
    workers.forEach((w) => w.postMessage({ type: 'go', until: started + args.seconds * 1000 }));
    const results = await done;
    const elapsed = (Date.now() - started) / 1000;
    const times = results.flatMap((r) => r.times).sort((a, b) => a - b);
    const mean = times.reduce((a, b) => a + b, 0) / times.length;
    console.log(JSON.stringify({
      runtime: `onnxruntime ${ort.env.versions ? ort.env.versions.common : ''}`.trim(),
      model: args.model,
      batch,
      threads: args.threads,
      instances: args.sessions,
      batches: times.length,
      throughput_ips: (times.length * batch) / elapsed,
      batch_ms: {
        mean, p50: percentile(times, 50), p90: percentile(times, 90), p99: percentile(times, 99), min: times[0],
      },
    }));
  }
  workers.forEach((w) => w.postMessage({ type: 'exit' }));
}

if (isMainThread) {
  main().catch((e) => {
    console.error(`ort_bench: ${e.message}`);
    process.exit(1);
  });
} else {
  workerMain().catch((e) => {
    console.error(`ort_bench worker: ${e.message}`);
    process.exit(1);
  });
}
