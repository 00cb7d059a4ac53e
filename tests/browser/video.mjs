// Makes a video on the /video page in headless Chromium: drops photos, watches the job page's
// progress bar fill to 100 %, then plays the MP4 in its <video> element until currentTime moves.
// Usage: node video.mjs URL OUTDIR PHOTO...
import { PATIENT, start } from './lib.mjs';

const { url, out, rest: photos, browser, page, fail } = await start('node video.mjs URL OUTDIR PHOTO...', { width: 1000, height: 1100 }, true);
try {
  await page.goto(url + '/video');
  await page.setInputFiles('#files', photos);
  await page.fill('#frame', '1');
  await Promise.all([page.waitForURL(/\/jobs\/[0-9a-f-]+$/), page.click('#make')]);
  const widths = [];
  const deadline = Date.now() + PATIENT;
  for (;;) {
    const seen = await page.evaluate(() => ({
      width: parseFloat(document.getElementById('fill').style.width) || 0,
      done: document.getElementById('resultcard').style.display !== 'none',
      error: document.getElementById('errorcard').style.display !== 'none' ? document.getElementById('error').textContent : '',
    }));
    if (seen.error) await fail('the job failed: ' + seen.error);
    if (widths[widths.length - 1] !== seen.width) widths.push(seen.width);
    if (seen.done) break;
    if (Date.now() > deadline) await fail('no result; the bar went ' + widths.join(' '));
    await page.waitForTimeout(25);
  }
  if (widths[widths.length - 1] !== 100) await fail('the bar ended at ' + widths.join(' '));
  await page.waitForFunction(() => document.getElementById('player').readyState >= 2, null, { timeout: PATIENT });
  await page.evaluate(() => document.getElementById('player').play());
  await page.waitForFunction(() => document.getElementById('player').currentTime > 0.5, null, { timeout: 60000 });
  const v = await page.$eval('#player', (e) => ({ t: e.currentTime, d: e.duration, w: e.videoWidth, h: e.videoHeight, err: e.error && e.error.message }));
  if (v.err) await fail('the player: ' + v.err);
  if (v.w !== 640 || v.h !== 480) await fail(`the video is ${v.w}x${v.h}, not 640x480`);
  await page.screenshot({ path: `${out}/video.png`, fullPage: true });
  console.log(`ok: bar ${widths.map((w) => Math.round(w)).join(' ')} %; video ${v.w}x${v.h}, ${v.d} s, played to ${v.t.toFixed(2)} s`);
} catch (e) {
  await fail(e.stack || String(e));
}
await browser.close();
