// The storefront's first load in headless Chromium: from navigation until the first products are shown, in a fresh
// browser context each time (nothing cached), and the bytes transferred. A measurement, not a test:
//   node tests/browser/pageload.mjs [BASE_URL (default http://127.0.0.1:8000)] [LOADS (default 10)]
// against a running server with a catalog (e.g. `commercex seed-demo`, then the release binary); the dependencies
// are those scripts/browser.sh installs.
import { chromium } from 'playwright-core';

const base = process.argv[2] ?? 'http://127.0.0.1:8000';
const loads = Number(process.argv[3] ?? 10);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const runs = [];
for (let i = 0; i < loads; i++) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const started = performance.now();
  await page.goto(`${base}/`);
  await page.locator('.card').first().waitFor();
  const shown = performance.now() - started;
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const scripts = performance.getEntriesByType('resource').filter((r) => !r.initiatorType.startsWith('img'));
    return { ready: nav.domContentLoadedEventEnd, bytes: scripts.reduce((sum, r) => sum + r.transferSize, nav.transferSize) };
  });
  runs.push({ shown, ...timing });
  await context.close();
}
await browser.close();
const sorted = (key) => runs.map((r) => r[key]).sort((a, b) => a - b);
const median = (key) => sorted(key)[Math.floor(loads / 2)];
console.log(`${loads} cold loads of ${base}/: first products shown after median ${median('shown').toFixed(0)} ms ` +
  `(max ${sorted('shown')[loads - 1].toFixed(0)} ms); DOMContentLoaded median ${median('ready').toFixed(0)} ms; ` +
  `${runs[0].bytes} bytes transferred, images aside`);
