// Fills the atom-effect calculator's form in headless Chromium, submits it, waits for the
// progress bar to reach 100 % and the result with its picture, and saves screenshots.
// Usage: node atoms.mjs URL OUTDIR
import { PATIENT, start } from './lib.mjs';

const { url, out, browser, page, fail } = await start('node atoms.mjs URL OUTDIR', { width: 1100, height: 1000 });
try {
  await page.goto(url);
  await page.fill('#grid', '48');
  await page.fill('#atoms', '2000');
  await page.fill('#seed', '5');
  await page.screenshot({ path: `${out}/1-form.png`, fullPage: true });
  await page.click('#submit');
  await page.waitForURL(/\/jobs\//, { timeout: PATIENT });
  // The bar moves: a width strictly between 0 % and 100 % is seen on the way (or it finished very fast).
  const widths = new Set();
  const deadline = Date.now() + PATIENT;
  while (Date.now() < deadline) {
    const w = await page.$eval('#fill', (e) => e.style.width);
    widths.add(w);
    if (w === '100%') break;
    await page.waitForTimeout(20);
  }
  if (!widths.has('100%')) await fail('the progress bar never reached 100 %: ' + [...widths].join(' '));
  await page.waitForSelector('#resultcard', { state: 'visible', timeout: PATIENT });
  const pct = await page.textContent('#pct');
  if (pct.trim() !== '100 %') await fail('the percentage reads ' + pct);
  const points = await page.textContent('#points');
  if (!points.includes('110,592 of 110,592')) await fail('points read ' + points);
  const minimum = await page.textContent('#minimum');
  if (!/^-?\d/.test(minimum.trim())) await fail('no minimum shown: ' + minimum);
  const point = await page.textContent('#point');
  if (!/^\(\d+, \d+, \d+\)$/.test(point.trim())) await fail('no grid point shown: ' + point);
  await page.waitForFunction(() => { const i = document.getElementById('plane'); return i.complete && i.naturalWidth > 0; }, null, { timeout: PATIENT });
  const state = await page.textContent('#state');
  if (state.trim() !== 'succeeded') await fail('state reads ' + state);
  await page.screenshot({ path: `${out}/2-result.png`, fullPage: true });
  // Reloaded, the page shows the same finished state.
  await page.reload();
  await page.waitForSelector('#resultcard', { state: 'visible', timeout: PATIENT });
  if ((await page.textContent('#minimum')) !== minimum) await fail('the reloaded page shows another minimum');
  await page.goto(url);
  const home = await page.textContent('body');
  if (!home.includes('succeeded')) await fail('the home page does not list the finished job');
  await page.screenshot({ path: `${out}/3-home.png`, fullPage: true });
  console.log(`ok: bar widths seen ${widths.size}, minimum ${minimum.trim()} at ${point.trim()}`);
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
