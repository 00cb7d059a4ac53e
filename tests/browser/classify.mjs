// Drops sample photos on the image page in headless Chromium and waits for each thumbnail's label.
// Usage: node classify.mjs URL OUTDIR PHOTO...
import { PATIENT, start } from './lib.mjs';

const { url, out, rest: photos, browser, page, fail } = await start('node classify.mjs URL OUTDIR PHOTO...', { width: 1100, height: 900 }, true);
try {
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
