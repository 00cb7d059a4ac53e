// Opens the HTML report of `nimbus bench http --out DIR` in headless Chromium: every chart (as
// SVG) drawn with its lines and title, every PNG chart it links loads as an image.
// Usage: node report.mjs FILE_URL OUTDIR CHARTS
import { start } from './lib.mjs';

const { url, out, rest, browser, page, fail } = await start('node report.mjs FILE_URL OUTDIR CHARTS', { width: 1000, height: 1400 }, true);
const expected = Number(rest[0]);
try {
  await page.goto(url);
  const charts = await page.$$eval('figure.chart', (figs) => figs.map((f) => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
    return {
      id: f.id,
      width: box.width,
      height: box.height,
      lines: svg ? svg.querySelectorAll('polyline, path').length : 0,
      text: svg ? svg.textContent : '',
      png: f.querySelector('a').getAttribute('href'),
    };
  }));
  if (charts.length !== expected) await fail(`${charts.length} charts, not ${expected}`);
  for (const c of charts) {
    if (c.width < 400 || c.height < 200) await fail(`${c.id} is not drawn: ${c.width}x${c.height}`);
    if (c.lines < 3) await fail(`${c.id} has no lines`);
    if (!/Request|Response/.test(c.text)) await fail(`${c.id} has no title: ${c.text.slice(0, 80)}`);
  }
  const perTarget = charts.filter((c) => c.id.endsWith('request-count-per-target'));
  if (perTarget.length === 0 || !perTarget.every((c) => /cluster\d-\d/.test(c.text))) await fail('the per-target charts do not name their targets');
  const sizes = await page.evaluate(async (pngs) => Promise.all(pngs.map((src) => new Promise((done) => {
    const img = new Image();
    img.onload = () => done(img.naturalWidth + 'x' + img.naturalHeight);
    img.onerror = () => done('broken ' + src);
    img.src = src;
  }))), charts.map((c) => c.png));
  if (!sizes.every((s) => s === '900x400')) await fail('PNG charts: ' + sizes.join(', '));
  await page.screenshot({ path: `${out}/http-report.png`, fullPage: true });
  console.log(`ok: ${charts.length} charts, PNGs ${sizes.join(' ')}`);
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
