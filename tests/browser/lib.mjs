// What every browser script shares: headless Debian Chromium, patient waits, and a failure that
// closes the browser and says what went wrong.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

// Waits are for results, bounded only so a broken page fails: a loaded machine is slow, not wrong.
export const PATIENT = 180000;

// Parses `URL OUTDIR REST...` (exits with the usage line when missing), makes OUTDIR, launches
// Chromium and opens a page; returns { url, out, rest, browser, page, fail }.
export async function start(usage, viewport, needRest = false) {
  const [url, out, ...rest] = process.argv.slice(2);
  if (!url || !out || (needRest && rest.length === 0)) { console.error('usage: ' + usage); process.exit(2); }
  mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const fail = async (msg) => { console.error('FAIL: ' + msg); await browser.close(); process.exit(1); };
  const page = await browser.newPage({ viewport });
  page.setDefaultTimeout(PATIENT);
  return { url, out, rest, browser, page, fail };
}
