// careserve's web console. It uses only the server's public HTTP API (docs/oip.md), so it
// is also a worked example of it: the model repository index, each model's config and the
// request statistics for the table; ModelInfer with the binary tensor data extension for
// the answers. Everything the server says is shown with textContent, never as HTML.
'use strict';

const STATS_WINDOW_MS = 30000;
const POLL_MS = 2000;

const state = {
  configs: new Map(),  // model name -> GET /v2/models/{name}/config
  snapshots: [],       // [{time, stats: Map(name -> stats entry)}], oldest first
  image: null,         // {bytes: Uint8Array, bitmap: ImageBitmap or null, name}
  scale: 1,           // canvas pixels per image pixel (drawImage)
  running: 0,          // the latest request's number: older answers are dropped
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) {
    if (k === 'class') e.className = v;
    else if (k === 'style') Object.assign(e.style, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// A JSON route; a non-2xx answer throws the server's own words ({"error": ...}).
async function api(path, options = {}) {
  const res = await fetch(path, options);
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status} ${text}`);
  return body;
}

// ---- The model table ---------------------------------------------------------------

// Prometheus's histogram_quantile over the buckets' increase between two snapshots.
function quantile(q, now, before) {
  const buckets = now.duration_seconds.buckets.map((b, i) => ({
    le: b.le === '+Inf' ? Infinity : Number(b.le),
    // A model not yet asked anything has no buckets.
    count: b.count - (before && before.duration_seconds.buckets[i] ? before.duration_seconds.buckets[i].count : 0),
  }));
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1].count;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return lower;
      return lower + (b.le - lower) * (rank - below) / Math.max(b.count - below, 1e-9);
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

function formatSeconds(s) {
  if (s === null) return '–';
  return s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`;
}

function liveFigures(name) {
  const snaps = state.snapshots;
  if (snaps.length < 2) return { rate: '–', p50: '–' };
  const last = snaps[snaps.length - 1];
  const first = snaps[0];
  const now = last.stats.get(name);
  const before = first.stats.get(name);
  if (!now) return { rate: '–', p50: '–' };
  const requests = (s) => (s ? s.success_count + s.fail_count : 0);
  const seconds = (last.time - first.time) / 1000;
  const rate = (requests(now) - requests(before)) / seconds;
  return { rate: rate >= 10 ? rate.toFixed(0) : rate.toFixed(2), p50: formatSeconds(quantile(0.5, now, before)) };
}

async function refreshModels() {
  let index, stats;
  try {
    [index, stats] = await Promise.all([
      api('/v2/repository/index', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }),
      api('/v2/models/stats'),
    ]);
  } catch (e) {
    $('models-error').textContent = e.message;
    $('models-error').hidden = false;
    return;
  }
  $('models-error').hidden = true;
  const time = Date.now();
  state.snapshots.push({ time, stats: new Map(stats.model_stats.map((s) => [s.name, s])) });
  while (state.snapshots.length > 2 && time - state.snapshots[1].time >= STATS_WINDOW_MS) state.snapshots.shift();

  const names = [...new Set(index.map((m) => m.name))];
  await Promise.all(names.filter((n) => !state.configs.has(n)).map(async (n) => {
    try {
      state.configs.set(n, await api(`/v2/models/${encodeURIComponent(n)}/config`));
    } catch (e) {
      state.configs.set(n, { name: n, error: e.message, versions: [] });
    }
  }));

  const body = $('models').tBodies[0];
  body.replaceChildren(...names.map((name) => {
    const c = state.configs.get(name);
    const entries = index.filter((m) => m.name === name);
    const ready = entries.some((m) => m.state === 'READY');
    const reason = entries.map((m) => m.reason).filter(Boolean).join('; ') || c.error || '';
    const live = liveFigures(name);
    const weights = c.weights ? c.weights.source : '–';
    const row = element('tr', { 'data-model': name, class: ready ? 'ready' : 'failed' },
      element('td', { class: 'name' }, name + (c.default ? ' (default)' : '')),
      element('td', { class: 'task' }, c.task || '–'),
      element('td', { class: 'versions' }, entries.filter((m) => m.version).map((m) => m.version).join(', ') || '–'),
      element('td', { class: 'state' }, ready ? 'ready' : `failed: ${reason}`),
      element('td', { class: `weights${weights === 'random' ? ' random' : ''}`,
                      title: weights === 'random' ? 'untrained export: its answers mean nothing' : '' }, weights),
      element('td', { class: 'precision' }, c.precision || '–'),
      element('td', { class: 'input' }, c.input ? `${c.input.width}×${c.input.height}` : '–'),
      element('td', { class: 'rate number' }, live.rate),
      element('td', { class: 'p50 number' }, live.p50));
    if (ready) row.cells[3].classList.add('state-ready');
    return row;
  }));
  updateModelChoice(names.filter((n) => index.some((m) => m.name === n && m.state === 'READY')));
}

function updateModelChoice(ready) {
  const select = $('model');
  const current = [...select.options].map((o) => o.value);
  if (current.length === ready.length && current.every((v, i) => v === ready[i])) return;
  const chosen = select.value;
  select.replaceChildren(...ready.map((n) => {
    const c = state.configs.get(n);
    return element('option', { value: n }, `${n} (${c.task})`);
  }));
  if (ready.includes(chosen)) select.value = chosen;
  modelChanged();
}

// ---- Asking a model ----------------------------------------------------------------

function chosenConfig() { return state.configs.get($('model').value); }

function modelChanged() {
  const c = chosenConfig();
  const detects = c && (c.task === 'detection' || c.task === 'instance_segmentation');
  $('threshold-control').hidden = !detects;
  if (detects && c.postprocess) {
    $('threshold').value = c.postprocess.score_threshold;
    $('threshold-value').textContent = Number($('threshold').value).toFixed(2);
  }
  if (state.image) ask();
}

// The outputs to ask for, by task: classification's top 5 as "score:index:label" strings;
// a segmentation mask as binary data (it is one byte a pixel).
function outputsFor(task) {
  switch (task) {
    case 'classification':
      return [{ name: 'probabilities', parameters: { classification: 5 } }];
    case 'detection':
      return ['boxes', 'scores', 'classes', 'num_detections'].map((name) => ({ name }));
    case 'instance_segmentation':
      return ['boxes', 'scores', 'classes', 'num_detections', 'masks'].map((name) => ({ name }));
    default:
      return [{ name: 'mask', parameters: { binary_data: true } }];
  }
}

// ModelInfer over HTTP with the binary tensor data extension: a JSON header, then the
// image as one BYTES element (a 4-byte little-endian length, then its bytes).
async function infer(model, bytes, outputs, parameters) {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: 'image', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: bytes.length + 4 } }],
    outputs,
    parameters,
  }));
  const body = new Uint8Array(header.length + 4 + bytes.length);
  body.set(header, 0);
  new DataView(body.buffer).setUint32(header.length, bytes.length, true);
  body.set(bytes, header.length + 4);
  const started = performance.now();
  const res = await fetch(`/v2/models/${encodeURIComponent(model)}/infer`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream', 'Inference-Header-Content-Length': String(header.length) },
    body,
  });
  const data = new Uint8Array(await res.arrayBuffer());
  const milliseconds = performance.now() - started;
  const length = res.headers.get('Inference-Header-Content-Length');
  const jsonEnd = length === null ? data.length : Number(length);
  let answer;
  try {
    answer = JSON.parse(new TextDecoder().decode(data.subarray(0, jsonEnd)));
  } catch (_) {
    throw new Error(`HTTP ${res.status}: the answer is not JSON`);
  }
  if (!res.ok) throw new Error(answer.error || `HTTP ${res.status}`);
  const tensors = {};
  let at = jsonEnd;
  for (const out of answer.outputs) {
    if (out.parameters && out.parameters.binary_data_size !== undefined) {
      const size = out.parameters.binary_data_size;
      tensors[out.name] = { ...out, raw: data.subarray(at, at + size) };
      at += size;
    } else {
      tensors[out.name] = out;
    }
  }
  return { tensors, milliseconds };
}

async function ask() {
  const model = $('model').value;
  const c = chosenConfig();
  if (!model || !c || !state.image) return;
  const number = ++state.running;
  const parameters = {};
  if (!$('threshold-control').hidden) parameters.score_threshold = Number($('threshold').value);
  // What was asked and what the page shows are marked on the page, for people's tools
  // and the browser test alike.
  document.body.dataset.asked = number;
  const status = $('status');
  const answered = () => Object.assign(status.dataset, {
    answered: number, model, image: state.image.name, threshold: parameters.score_threshold ?? '',
  });
  status.textContent = `asking ${model}…`;
  status.dataset.state = 'busy';
  try {
    const { tensors, milliseconds } = await infer(model, state.image.bytes, outputsFor(c.task), parameters);
    if (number !== state.running) return;
    $('error').hidden = true;
    draw(c, tensors);
    status.textContent = `${model} answered in ${milliseconds.toFixed(1)} ms`;
    status.dataset.state = 'done';
    answered();
  } catch (e) {
    if (number !== state.running) return;
    $('error').textContent = e.message;
    $('error').hidden = false;
    $('answer').replaceChildren();
    drawImage();
    status.textContent = `${model} refused the request`;
    status.dataset.state = 'error';
    answered();
  }
}

async function useFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let bitmap = null;
  try { bitmap = await createImageBitmap(new Blob([bytes])); } catch (_) { /* the server will say why */ }
  state.image = { bytes, bitmap, name: file.name };
  await ask();
}

// ---- Drawing answers ---------------------------------------------------------------

// Distinct colours for class indices (golden-angle hues).
function colour(index, alpha = 1) {
  return `hsla(${(index * 137.508) % 360}, 75%, 50%, ${alpha})`;
}
function rgb(index) {
  const probe = document.createElement('canvas').getContext('2d');
  probe.fillStyle = colour(index);
  const hex = probe.fillStyle;  // "#rrggbb"
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// Small images are drawn enlarged (whole pixels, no smoothing) so that boxes and labels
// stay readable; state.scale maps the image's pixels to the canvas's.
const DRAW_SIZE = 512;

function drawImage() {
  const canvas = $('canvas');
  const bitmap = state.image && state.image.bitmap;
  state.scale = bitmap ? Math.max(1, Math.floor(DRAW_SIZE / Math.max(bitmap.width, bitmap.height))) : 1;
  canvas.width = bitmap ? bitmap.width * state.scale : 0;
  canvas.height = bitmap ? bitmap.height * state.scale : 0;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  g.imageSmoothingEnabled = false;
  if (bitmap) g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return g;
}

// Blends a colour over every canvas pixel whose pixel of a width x height map (a mask at
// the image's resolution) has one: colourAt(index) is [r, g, b] or null.
function blend(g, width, height, colourAt) {
  const W = g.canvas.width, H = g.canvas.height;
  if (W === 0 || H === 0) return;
  const pixels = g.getImageData(0, 0, W, H);
  for (let y = 0; y < H; ++y) {
    const row = Math.min(height - 1, Math.floor(y * height / H)) * width;
    for (let x = 0; x < W; ++x) {
      const c = colourAt(row + Math.min(width - 1, Math.floor(x * width / W)));
      if (!c) continue;
      const i = 4 * (y * W + x);
      pixels.data[i] = (pixels.data[i] + c[0]) >> 1;
      pixels.data[i + 1] = (pixels.data[i + 1] + c[1]) >> 1;
      pixels.data[i + 2] = (pixels.data[i + 2] + c[2]) >> 1;
      pixels.data[i + 3] = 255;
    }
  }
  g.putImageData(pixels, 0, 0);
}

function labelOf(c, index) {
  return c.labels && index >= 0 && index < c.labels.length ? c.labels[index] : `class ${index}`;
}

function draw(c, tensors) {
  const g = drawImage();
  const answer = $('answer');
  if (c.task === 'classification') {
    // "score:index:label", best first.
    const rows = tensors.probabilities.data.map((s) => {
      const [score, index, ...label] = s.split(':');
      return { score: Number(score), index: Number(index), label: label.join(':') };
    });
    answer.replaceChildren(element('ol', { class: 'top5', id: 'top5' }, ...rows.map((r) => element('li', {},
      element('span', { class: 'label' }, r.label || labelOf(c, r.index)),
      element('span', {}, element('span', { class: 'bar', style: { display: 'block', width: `${(100 * r.score).toFixed(1)}%` } })),
      element('span', { class: 'score' }, `${(100 * r.score).toFixed(1)}%`)))));
  } else if (c.task === 'detection' || c.task === 'instance_segmentation') {
    const n = tensors.num_detections.data[0];
    const boxes = tensors.boxes.data, scores = tensors.scores.data, classes = tensors.classes.data;
    const masks = tensors.masks ? tensors.masks.data : null;
    const items = [];
    // Lowest score first, so that the best answers' boxes and labels end up on top.
    for (let i = n - 1; i >= 0; --i) {
      const cls = classes[i];
      if (masks && masks[i]) paintMask(g, JSON.parse(masks[i]), rgb(cls));
      const [x0, y0, x1, y1] = boxes.slice(4 * i, 4 * i + 4).map((v) => v * state.scale);
      const text = `${labelOf(c, cls)} ${scores[i].toFixed(2)}`;
      g.lineWidth = Math.max(2, Math.round(g.canvas.width / 400));
      g.strokeStyle = colour(cls);
      g.strokeRect(x0, y0, x1 - x0, y1 - y0);
      g.font = `${Math.max(12, Math.round(g.canvas.width / 45))}px sans-serif`;
      const w = g.measureText(text).width + 6, h = parseInt(g.font, 10) + 4;
      g.fillStyle = colour(cls);
      g.fillRect(x0, Math.max(0, y0 - h), w, h);
      g.fillStyle = '#fff';
      g.fillText(text, x0 + 3, Math.max(0, y0 - h) + h - 5);
      items.unshift(element('li', { 'data-label': labelOf(c, cls) },
        element('span', { class: 'swatch', style: { background: colour(cls) } }),
        element('span', { class: 'label' }, labelOf(c, cls)),
        element('span', { class: 'score' }, scores[i].toFixed(2))));
    }
    answer.replaceChildren(
      element('p', { class: 'summary', id: 'box-count' }, `${n} ${n === 1 ? 'box' : 'boxes'}${masks ? ' with masks' : ''}`),
      element('ul', { class: 'detections', id: 'detections' }, ...items));
  } else {
    const out = tensors.mask;
    const [, height, width] = out.shape;
    const wide = out.datatype === 'UINT16';
    const values = wide ? new Uint16Array(out.raw.slice().buffer) : out.raw;
    const counts = new Map();
    for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
    const palette = new Map([...counts.keys()].map((k) => [k, rgb(k)]));
    const background = (k) => /^background$/i.test(labelOf(c, k));
    blend(g, width, height, (i) => (background(values[i]) ? null : palette.get(values[i])));
    const present = [...counts.entries()].sort((a, b) => b[1] - a[1]);
    answer.replaceChildren(
      element('p', { class: 'summary' }, `${present.length} classes`),
      element('ul', { class: 'legend', id: 'legend' }, ...present.map(([k, count]) => element('li', { 'data-label': labelOf(c, k) },
        element('span', { class: 'swatch', style: { background: background(k) ? 'transparent' : colour(k), outline: '1px solid #aaa' } }),
        element('span', { class: 'label' }, labelOf(c, k)),
        element('span', { class: 'score' }, `${(100 * count / values.length).toFixed(1)}%`)))));
  }
}

// COCO compressed RLE (pycocotools' rleFrString): run lengths in column-major order,
// starting with a run of zeros; each count is 5-bit groups as characters from '0', with
// counts past the second stored as the difference from the count two before.
function decodeRle(rle) {
  const [height, width] = rle.size;
  const s = rle.counts;
  const counts = [];
  for (let p = 0; p < s.length;) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      ++k;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(height * width);
  let at = 0;
  counts.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = at; j < at + run; ++j) mask[(j % height) * width + Math.floor(j / height)] = 1;
    }
    at += run;
  });
  return { mask, height, width };
}

function paintMask(g, rle, rgbColour) {
  const { mask, height, width } = decodeRle(rle);
  blend(g, width, height, (i) => (mask[i] ? rgbColour : null));
}

// ---- Wiring ------------------------------------------------------------------------

async function start() {
  try {
    const meta = await api('/v2');
    $('server').textContent = `${meta.name} ${meta.version}`;
  } catch (e) {
    $('server').textContent = e.message;
  }
  $('model').addEventListener('change', modelChanged);
  $('file').addEventListener('change', () => { if ($('file').files[0]) useFile($('file').files[0]); });
  let pending = null;
  $('threshold').addEventListener('input', () => {
    $('threshold-value').textContent = Number($('threshold').value).toFixed(2);
    clearTimeout(pending);
    pending = setTimeout(ask, 150);
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (!e.dataTransfer.files[0]) return;
    $('file').value = '';  // the chooser would otherwise still name the file chosen before
    useFile(e.dataTransfer.files[0]);
  });
  await refreshModels();
  setInterval(refreshModels, POLL_MS);
}

start();
