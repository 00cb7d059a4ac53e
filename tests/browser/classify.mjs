// Drops sample photos on the image page in headless Chromium and waits for each thumbnail's label.
// Usage: node classify.mjs URL OUTDIR PHOTO...
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [url, out, ...photos] = process.argv.slice(2);
if (!url || !out || photos.length === 0) { console.error('usage: node classify.mjs URL OUTDIR PHOTO...'); process.exit(2); }
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
// Waits are for results, bounded only so a broken page fails: a loaded machine is slow, not wrong.
const PATIENT = 180000;
const fail = async (msg) => { console.error('FAIL: ' + msg); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(PATIENT);
  await page.goto(url + '/classify');
  await page.setInputFiles('#files', photos);
  await page.waitForFunction((n) => {
    const labels = [...document.querySelectorAll('.tile .label')].map((e) => e.textContent);
    return labels.length === n && labels.every((l) => l && l !== 'waiting…');
  }, photos.length, { timeout: PATIENT });
  const labels = await page.$$eval('.tile .label', (es) => es.map((e) => e.textContent));
  const thumbs = await page.$$eval('.tile img', (es) => es.every((i) => i.complete && i.naturalWidth > 0));
  if (!thumbs) await fail('a thumbnail did not load');
  await page.screenshot({ path: `${out}/classify.png`, fullPage: true });
  console.log('ok: ' + labels.join(' | '));
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
