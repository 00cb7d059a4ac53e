// Opens the fleet page of a running `nimbus up` in headless Chromium: the autoscaler's summary,
// both charts drawn (instances by state, queue depth), the instance table; then the queues page.
// Usage: node fleet.mjs URL OUTDIR
import { start } from './lib.mjs';

const { url, out, browser, page, fail } = await start('node fleet.mjs URL OUTDIR', { width: 1100, height: 1200 });
try {
  await page.goto(url + '/fleet');
  // The warm minimum: one running worker, and samples enough for lines in both charts.
  await page.waitForFunction(() => {
    const r = document.getElementById('running');
    const lines = [...document.querySelectorAll('polyline.series')];
    return r && r.textContent === '1' && lines.length === 6 && lines.every((l) => l.getAttribute('points').split(' ').length > 2);
  });
  const summary = await page.textContent('#summary');
  if (!summary.includes('backlog')) await fail('the policy is not named: ' + summary);
  const rows = await page.$$eval('#fleet tbody tr', (rs) => rs.map((r) => r.textContent));
  if (rows.length !== 1 || !rows[0].includes('running')) await fail('instance table: ' + rows.join(' | '));
  await page.waitForSelector('#decisions tbody tr');
  await page.screenshot({ path: `${out}/fleet.png`, fullPage: true });
  await page.goto(url + '/queues');
  await page.waitForFunction(() => [...document.querySelectorAll('#queues tbody tr')].some((r) => r.textContent.includes('classify-requests')));
  await page.screenshot({ path: `${out}/queues.png`, fullPage: true });
  console.log('ok: ' + summary.trim());
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
