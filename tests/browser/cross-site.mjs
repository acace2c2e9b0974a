#!/usr/bin/env node
// Another site's page in the user's browser against a hearth serving without keys (open mode,
// what the quickstart runs). Chromium resolves attacker.test to 127.0.0.1, as a DNS-rebinding
// attacker's name would; the attacker's page is served by this script on its own port.
//   1. The attacker's page posts a document into the user's collection with a text/plain form
//      and with a no-cors fetch (simple requests: no preflight; creating a collection takes
//      JSON, which another site cannot send without one): hearth must refuse both (403).
//   2. The rebinding page: http://attacker.test:<hearth's port>/ reaches hearth itself under the
//      attacker's name, where the page could read answers: hearth must refuse it (421).
// First, hearth's own page uploads (202): the guard does not break the product.
// Prints one JSON line of what it saw, then PASS; the Rust test checks the store.
//
//   node tests/browser/cross-site.mjs HEARTH_URL
//
// Environment: CHROMIUM (default /usr/bin/chromium), HEARTH_TEST_TIMEOUT_S (default 120).
import http from 'node:http';
import { chromium } from 'playwright-core';

const base = process.argv[2];
if (!base) {
  console.error('usage: node cross-site.mjs HEARTH_URL');
  process.exit(2);
}
const hearth = new URL(base);
const totalMs = Number(process.env.HEARTH_TEST_TIMEOUT_S || 120) * 1000;
const watchdog = setTimeout(() => {
  console.error(`FAIL: no result within ${totalMs / 1000} s`);
  process.exit(1);
}, totalMs);

const target = (source) =>
  `http://127.0.0.1:${hearth.port}/v1/collections/own/documents?source=${source}`;
const attackerPage = `<!doctype html><title>attacker</title>
<form id="form" method="POST" enctype="text/plain" action="${target('form.txt')}">
<input name="planted" value="by a form on another site"></form>
<script>
fetch(${JSON.stringify(target('fetch.txt'))}, {method: 'POST', mode: 'no-cors',
  headers: {'content-type': 'text/plain'}, body: 'planted by a no-cors fetch'})
  .then(() => { document.title = 'fetch sent'; }, (e) => { document.title = 'fetch failed: ' + e; });
</script>`;
const attacker = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(attackerPage);
});
await new Promise((r) => attacker.listen(0, '127.0.0.1', r));
const attackerUrl = `http://attacker.test:${attacker.address().port}/`;

const seen = {};
let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--host-resolver-rules=MAP attacker.test 127.0.0.1', '--no-sandbox'],
  });
  const page = await browser.newPage();
  const statuses = {};
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/v1/')) statuses[u.searchParams.get('source') || u.pathname] = r.status();
  });

  // hearth's own page uploads (so the rebinding page below would have something to read).
  await page.goto(`http://127.0.0.1:${hearth.port}/`);
  [seen.own_collection, seen.own] = await page.evaluate(async () => {
    const c = await fetch('/v1/collections', {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "own"}',
    });
    const r = await fetch('/v1/collections/own/documents?source=own.txt', {
      method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'written from hearth\'s own page',
    });
    return [c.status, r.status];
  });
  // 1. The attacker's page: the fetch runs on load, then the form is submitted.
  await page.goto(attackerUrl);
  await page.waitForFunction(() => document.title !== 'attacker', null, { timeout: 30_000 });
  seen.fetch_title = await page.title();
  const [formNav] = await Promise.all([
    page.waitForNavigation({ timeout: 30_000 }),
    page.evaluate(() => document.getElementById('form').submit()),
  ]);
  seen.form = formNav ? formNav.status() : null;
  // The no-cors fetch's status is opaque to the page; the browser saw it.
  for (let i = 0; i < 100 && statuses['fetch.txt'] === undefined; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  seen.fetch = statuses['fetch.txt'] ?? null;

  // 2. Rebinding: hearth reached under the attacker's name.
  const rebound = await page.goto(`http://attacker.test:${hearth.port}/`);
  seen.rebound_page = rebound.status();
  const reboundApi = await page.goto(`http://attacker.test:${hearth.port}/v1/collections`);
  seen.rebound_api = reboundApi.status();
  seen.rebound_api_body = (await reboundApi.text()).slice(0, 300);

  console.log(JSON.stringify(seen));
  console.log('PASS');
} catch (e) {
  console.log(JSON.stringify(seen));
  console.error(`FAIL: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  attacker.close();
}
