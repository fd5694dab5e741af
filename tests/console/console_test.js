// Drives careserve's web console in Debian's headless chromium (playwright-core, no
// browser download) and prints, as one JSON object, what a person would see at each step;
// tests/console/test_console.py compares it with care-client's answers.
//
//   node console_test.js URL PLAN.json OUT_DIR
// PLAN: {"classifier", "detector", "segmenter", "instances", "ankle_boot", "scene", "bad_file", "models": [...]}
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [url, planFile, outDir] = process.argv.slice(2);
const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));
const seen = { console: [], steps: {} };

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
           '--disable-component-update', '--no-first-run'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, ignoreHTTPSErrors: true });
    const page = await context.newPage();
    page.setDefaultTimeout(60000);
    page.on('console', (m) => seen.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => seen.console.push(`pageerror: ${e.message}`));
    // Anything the page fetches must come from the server itself.
    const origin = new URL(url).origin;
    seen.foreign_requests = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(origin) && !/^(data|blob):/.test(r.url())) seen.foreign_requests.push(r.url());
    });

    await page.goto(url);
    await page.waitForFunction((names) => names.every((n) => document.querySelector(`#models tr[data-model="${n}"]`)),
                               plan.models);
    seen.table = await table(page);
    seen.server = await page.textContent('#server');

    seen.steps.classify = await ask(page, plan.classifier, plan.ankle_boot, 'classify', async () => ({
      top5: await page.$$eval('#top5 li .label', (e) => e.map((x) => x.textContent)),
      scores: await page.$$eval('#top5 li .score', (e) => e.map((x) => x.textContent)),
    }));
    seen.steps.detect = await ask(page, plan.detector, plan.scene, 'detect', () => detections(page));
    // The score threshold slider asks again.
    seen.steps.detect_threshold = await again(page, 'detect_threshold',
                                              { model: plan.detector, image: current, threshold: plan.high_threshold },
                                              async () => {
      await page.$eval('#threshold', (e, v) => { e.value = v; e.dispatchEvent(new Event('input')); },
                       String(plan.high_threshold));
    }, () => detections(page));
    // The scene again, dropped on the page this time.
    seen.steps.segment = await ask(page, plan.segmenter, plan.scene, 'segment', async () => ({
      legend: await page.$$eval('#legend li .label', (e) => e.map((x) => x.textContent)),
    }), 'drop');
    seen.steps.instances = await ask(page, plan.instances, null, 'instances', () => detections(page));
    seen.steps.bad_file = await ask(page, plan.classifier, plan.bad_file, 'bad_file', async () => ({
      error: await page.textContent('#error'),
      error_visible: await page.isVisible('#error'),
    }));
    // The classifier once more, so that the table's 30 s window holds a request; its live
    // figures catch up (polled every 2 s).
    seen.steps.classify_again = await ask(page, plan.classifier, plan.ankle_boot, 'classify_again', async () => ({
      top5: await page.$$eval('#top5 li .label', (e) => e.map((x) => x.textContent)),
    }));
    try {
      await page.waitForFunction((n) => {
        const row = document.querySelector(`#models tr[data-model="${n}"]`);
        return row && /ms|s$/.test(row.querySelector('.p50').textContent) && Number(row.querySelector('.rate').textContent) > 0;
      }, plan.classifier);
    } finally {
      seen.table_after = await table(page);
    }
    await page.screenshot({ path: path.join(outDir, 'console_table.png'), fullPage: true });
  } finally {
    await browser.close();
  }
}

async function table(page) {
  return page.$$eval('#models tbody tr', (rows) => rows.map((r) => {
    const cell = (c) => r.querySelector(`.${c}`).textContent;
    return { model: r.dataset.model, task: cell('task'), versions: cell('versions'), state: cell('state'),
             weights: cell('weights'), precision: cell('precision'), input: cell('input'), rate: cell('rate'),
             p50: cell('p50') };
  }));
}

async function detections(page) {
  return {
    summary: await page.textContent('#box-count'),
    labels: await page.$$eval('#detections li .label', (e) => e.map((x) => x.textContent)),
  };
}

// Runs `action`, waits until the page shows the answer to the last request it made, for
// `want` (model, image file name, score threshold), then reads the page.
async function again(page, name, want, action, read) {
  await action();
  await page.waitForFunction((w) => {
    const s = document.querySelector('#status').dataset;
    return s.answered === document.body.dataset.asked && s.model === w.model && s.image === w.image &&
      (w.threshold === undefined || Number(s.threshold) === w.threshold);
  }, want);
  const result = await read();
  result.status = await page.textContent('#status');
  await page.screenshot({ path: path.join(outDir, `console_${name}.png`), fullPage: true });
  return result;
}

// Drops `file` on the page's drop zone, as a person dragging it from a file manager would.
async function drop(page, file) {
  const dataTransfer = await page.evaluateHandle(({ base64, name }) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type: 'image/png' }));
    return transfer;
  }, { base64: fs.readFileSync(file).toString('base64'), name: `dropped_${path.basename(file)}` });
  await page.dispatchEvent('#drop', 'dragover', { dataTransfer });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer });
}

// Picks `model`, then (if given) the file `image`, chosen in the file input or dropped
// (`how`); the page asks the server on each.
let current = null;
async function ask(page, model, image, name, read, how = 'choose') {
  // The dropped copy has its own name: the page's answer for it cannot be an earlier one.
  if (image) current = `${how === 'drop' ? 'dropped_' : ''}${path.basename(image)}`;
  return again(page, name, { model, image: current }, async () => {
    await page.selectOption('#model', model);
    if (image && how === 'drop') await drop(page, image);
    else if (image) await page.setInputFiles('#file', image);
  }, read);
}

main().then(() => {
  process.stdout.write(JSON.stringify(seen));
}, (e) => {
  process.stdout.write(JSON.stringify(seen));
  console.error(e.stack || String(e));
  process.exit(1);
});
