#!/usr/bin/env node
// End-to-end test of the web page: upload a document, wait until it is indexed, ask a question,
// with the model writing: watch the answer stream in, see its unsupported sentences marked, and
// click a citation of a supported sentence: its passage opens with the supporting text
// highlighted. Then ask again with the default quoted answer: every quote is supported, and its
// citation highlights exactly the quoted text. Drives Debian's Chromium through
// playwright-core (scripts/browser-deps.sh installs both).
//
//   node tests/browser/ask.mjs BASE_URL FILE QUESTION EXPECTED_SOURCE_SUBSTRING
//
// Environment: HEARTH_TEST_COLLECTION (default "browser"), HEARTH_TEST_ARTIFACTS (a folder for
// ask.png), HEARTH_TEST_TIMEOUT_S (whole run, default 300), HEARTH_API_KEY (stored as the page's
// API key when set; the key must be allowed to create collections and upload), CHROMIUM
// (default /usr/bin/chromium).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, file, question, expected] = process.argv.slice(2);
if (!base || !file || !question || !expected) {
  console.error('usage: node ask.mjs BASE_URL FILE_TO_UPLOAD QUESTION EXPECTED_SOURCE_SUBSTRING');
  process.exit(2);
}
const collection = process.env.HEARTH_TEST_COLLECTION || 'browser';
const artifacts = process.env.HEARTH_TEST_ARTIFACTS || '';
const apiKey = process.env.HEARTH_API_KEY || '';
const totalMs = Number(process.env.HEARTH_TEST_TIMEOUT_S || 300) * 1000;
const INDEX_MS = 180_000;
const ANSWER_MS = 180_000;
const source = path.basename(file);
const started = Date.now();

let browser = null;
let page = null;
const problems = [];  // console errors and page errors

const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };

async function screenshot() {
  if (!artifacts || !page) return;
  try {
    fs.mkdirSync(artifacts, { recursive: true });
    const out = path.join(artifacts, 'ask.png');
    await page.screenshot({ path: out, fullPage: true, timeout: 10_000 });
    log(`screenshot: ${out}`);
  } catch (e) {
    console.error(`(could not take a screenshot: ${e.message})`);
  }
}

async function closeBrowser() {
  const b = browser;
  browser = null;
  if (b) await Promise.race([b.close().catch(() => {}), new Promise((r) => setTimeout(r, 10_000))]);
}

let finishing = false;
async function finish(code, msg) {
  if (finishing) return;  // the global timeout and the failing run must not both report
  finishing = true;
  if (msg) (code ? console.error : console.log)(msg);
  await closeBrowser();
  process.exit(code);
}

const killer = setTimeout(async () => {
  if (finishing) return;
  finishing = true;
  await screenshot();
  console.error(`FAIL: the test did not finish within ${totalMs / 1000} s`);
  await closeBrowser();
  process.exit(1);
}, totalMs);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => finish(1, `FAIL: interrupted (${sig})`));

async function run() {
  if (!fs.existsSync(file)) fail(`no such file: ${file}`);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  log(`browser: Chromium ${browser.version()}`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // The page keeps its API key in localStorage: store it before the page's first request,
  // which would otherwise be answered 401 (and logged as a console error).
  if (apiKey) await context.addInitScript((k) => localStorage.setItem('hearth.apiKey', k), apiKey);
  page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()} (${m.location().url || 'page'})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The bodies the page sends to /ask, to check how it carries a conversation.
  const askBodies = [];
  page.on('request', (r) => { if (r.url().endsWith('/ask')) askBodies.push(r.postDataJSON()); });
  page.setDefaultTimeout(30_000);

  const res = await page.goto(new URL('/', base).href, { waitUntil: 'load' });
  if (!res || !res.ok()) fail(`GET / answered ${res ? res.status() : 'nothing'}`);
  log(`opened ${page.url()}`);

  if (apiKey && (await page.inputValue('#api-key')) !== apiKey) fail('the API key field does not show the stored key');

  // Create (or select, when it exists) the test collection.
  await page.waitForFunction(() => document.querySelector('#collection').options.length > 0);
  await page.click('#new-collection-toggle');
  await page.fill('#new-collection', collection);
  await page.click('#create-collection');
  await page.waitForFunction((c) => document.querySelector('#collection').value === c, collection)
    .catch(async () => fail(`collection ${collection} was not selected: ${await page.textContent('#global-error')}`));
  log(`collection: ${collection}`);

  // Upload and wait for the document to be indexed; then the other files the test names
  // (Office files: the page must take them as it takes the rest).
  await uploadAndWait(file);
  for (const more of (process.env.HEARTH_TEST_MORE_FILES || '').split(':').filter(Boolean)) {
    await uploadAndWait(more);
  }

  // Ask, recording the answer's length each time it changes while it streams.
  await page.evaluate(() => {
    const a = document.querySelector('#answer');
    window.__lengths = [];
    new MutationObserver(() => {
      if (a.dataset.state === 'streaming') window.__lengths.push(a.textContent.length);
    }).observe(a, { childList: true, subtree: true, characterData: true });
  });
  await page.selectOption('#answer-mode', 'generate');
  await page.fill('#question', question);
  await page.click('#ask-button');
  log(`asked: ${question}`);
  await page.waitForFunction(() => ['done', 'error'].includes(document.querySelector('#answer').dataset.state),
    null, { timeout: ANSWER_MS, polling: 200 })
    .catch(() => fail(`the answer did not finish within ${ANSWER_MS / 1000} s`));
  const result = await page.evaluate(() => ({
    state: document.querySelector('#answer').dataset.state,
    answer: document.querySelector('#answer').textContent,
    error: document.querySelector('#ask-error').textContent,
    lengths: window.__lengths,
    citations: document.querySelectorAll('#answer a.citation').length,
    sourcesHeading: document.querySelector('#sources-heading').textContent,
    sources: [...document.querySelectorAll('#sources li')].map((li) => li.textContent),
    timings: document.querySelector('#timings').textContent,
  }));
  if (result.state !== 'done') fail(`the answer failed: ${result.error || '(no message)'}`);
  const growth = result.lengths.filter((n, i, a) => n > 0 && (i === 0 || n > a[i - 1]));
  const excerpt = result.answer.length > 300 ? result.answer.slice(0, 300) + '…' : result.answer;
  log(`answer (${result.answer.length} chars): ${JSON.stringify(excerpt)}`);
  log(`lengths while streaming (${result.lengths.length} changes): ${summarize(result.lengths)}`);
  log(`timings: ${result.timings}`);
  log(`citation links: ${result.citations}; ${result.sourcesHeading} ${JSON.stringify(result.sources)}`);
  if (growth.length < 2) fail(`the answer did not stream: lengths seen ${JSON.stringify(result.lengths)}`);
  if (!result.answer.trim()) fail('the answer is empty');
  const matching = result.sources.filter((s) => s.includes(expected));
  if (result.citations === 0 && matching.length === 0) {
    fail(`no citation link and no listed source contains ${JSON.stringify(expected)}`);
  }

  // The finished answer is split into checked sentences; unsupported ones are marked.
  const checked = await page.evaluate(() => [...document.querySelectorAll('#answer .sentence')].map((e) => ({
    supported: e.dataset.supported, marked: e.classList.contains('unsupported'), text: e.textContent,
  })));
  log(`sentences: ${checked.map((c) => c.supported).join(' ')}`);
  if (!checked.length) fail('the finished answer shows no checked sentences');
  const wrong = checked.filter((c) => c.marked !== (c.supported === 'false'));
  if (wrong.length) fail(`sentences marked wrongly: ${JSON.stringify(wrong)}`);

  // Click a citation of a supported sentence: its passage opens with the supporting text
  // highlighted, and that text holds words of the sentence.
  const supported = '#answer .sentence[data-supported="true"] a.citation';
  if (!(await page.$(supported))) {
    fail(`no supported sentence carries a citation: ${JSON.stringify(checked)}`);
  }
  const sentence = await page.$eval(supported, (a) => a.closest('.sentence').textContent);
  await page.click(`${supported} >> nth=0`);
  await page.waitForSelector('#passage-view', { state: 'visible', timeout: 5_000 })
    .catch(() => fail('#passage-view did not open after clicking a citation'));
  const title = (await page.textContent('#passage-title')).trim();
  const text = (await page.textContent('#passage-text')).trim();
  if (!text) fail('#passage-view shows no passage text');
  const mark = await page.$('#passage-text mark');
  if (!mark || !(await mark.isVisible())) fail('the supporting span is not highlighted');
  const highlighted = (await mark.textContent()).trim();
  const wordsOf = (t) => new Set((t.toLowerCase().match(/[\p{L}\p{N}]{4,}/gu) || []));
  const shared = [...wordsOf(highlighted)].filter((w) => wordsOf(sentence).has(w));
  log(`passage view: ${JSON.stringify(title)}, highlighted ${JSON.stringify(highlighted.slice(0, 200))}`);
  if (!shared.length) fail(`the highlight ${JSON.stringify(highlighted)} shares no word with ${JSON.stringify(sentence)}`);
  if (!text.includes(highlighted)) fail('the highlight is not part of the passage');

  // The default: quoted answers. Every sentence is a supported quote; its citation highlights
  // the quoted text itself.
  await page.keyboard.press('Escape');
  await page.selectOption('#answer-mode', '');
  await page.click('#ask-button');
  log('asked again, quoted');
  await page.waitForFunction(() => ['done', 'error'].includes(document.querySelector('#answer').dataset.state),
    null, { timeout: ANSWER_MS, polling: 200 })
    .catch(() => fail(`the quoted answer did not finish within ${ANSWER_MS / 1000} s`));
  const quotes = await page.evaluate(() => [...document.querySelectorAll('#answer .sentence')].map((e) => ({
    supported: e.dataset.supported, text: e.textContent,
  })));
  log(`quoted sentences: ${quotes.map((c) => c.supported).join(' ')}`);
  if (!quotes.length || quotes.some((q) => q.supported !== 'true')) {
    fail(`a quoted answer should be supported quotes only: ${JSON.stringify(quotes)}`);
  }
  const quoteCitation = '#answer .sentence[data-supported="true"] a.citation';
  const quoteText = await page.$eval(quoteCitation, (a) => a.closest('.sentence').textContent);
  await page.click(`${quoteCitation} >> nth=0`);
  await page.waitForSelector('#passage-view', { state: 'visible', timeout: 5_000 })
    .catch(() => fail('#passage-view did not open after clicking a quote\'s citation'));
  const quoteMark = await page.$('#passage-text mark');
  if (!quoteMark || !(await quoteMark.isVisible())) fail('the quoted span is not highlighted');
  const squeeze = (t) => t.replace(/\s+/g, ' ').trim();
  const quotedSpan = squeeze(await quoteMark.textContent());
  log(`quote ${JSON.stringify(quoteText.slice(0, 120))}, highlighted ${JSON.stringify(quotedSpan.slice(0, 120))}`);
  if (!quotedSpan || !squeeze(quoteText).includes(quotedSpan)) {
    fail(`the highlight ${JSON.stringify(quotedSpan)} is not the quoted text ${JSON.stringify(quoteText)}`);
  }

  // The questions after the first continue its conversation: the earlier ones are listed
  // above the answer, and "New conversation" starts over.
  if (!askBodies.length || askBodies[0].conversation !== true || askBodies[0].conversation_id) {
    fail(`the first question should start a conversation: ${JSON.stringify(askBodies[0])}`);
  }
  const conversation = askBodies[1] && askBodies[1].conversation_id;
  if (!/^[0-9a-f]{32}$/.test(conversation || '')) fail(`the second question did not continue the conversation: ${JSON.stringify(askBodies[1])}`);
  await page.keyboard.press('Escape');
  await page.fill('#question', 'and which option compresses the output?');
  await page.click('#ask-button');
  await page.waitForFunction(() => ['done', 'error'].includes(document.querySelector('#answer').dataset.state),
    null, { timeout: ANSWER_MS, polling: 200 })
    .catch(() => fail(`the follow-up did not finish within ${ANSWER_MS / 1000} s`));
  const earlier = await page.$$eval('#earlier .q', (qs) => qs.map((q) => q.textContent));
  log(`earlier questions: ${JSON.stringify(earlier)}`);
  if (earlier.length !== 2 || earlier[0] !== question) fail(`the earlier questions are not listed: ${JSON.stringify(earlier)}`);
  if (askBodies[2].conversation_id !== conversation) fail('the follow-up did not continue the same conversation');
  if (!(await page.isVisible('#new-conversation'))) fail('no "New conversation" button during a conversation');
  await page.click('#new-conversation');
  if (await page.isVisible('#earlier')) fail('"New conversation" left the earlier questions on the page');
  await page.fill('#question', question);
  await page.click('#ask-button');
  await page.waitForFunction(() => ['done', 'error'].includes(document.querySelector('#answer').dataset.state),
    null, { timeout: ANSWER_MS, polling: 200 });
  if (askBodies[3].conversation !== true || askBodies[3].conversation_id) fail('after "New conversation" the question did not start a new one');

  await screenshot();
  if (problems.length) fail(`the page reported errors:\n  ${problems.join('\n  ')}`);
}

// Chooses `file_` in the page's file input and waits until its row says indexed.
async function uploadAndWait(file_) {
  const name = path.basename(file_);
  await page.setInputFiles('#file-input', file_);
  log(`uploading ${name}`);
  const row = `#documents tr[data-source="${name.replace(/["\\]/g, '\\$&')}"]`;
  const deadline = Date.now() + INDEX_MS;
  let status = '';
  for (;;) {
    const uploadError = await page.$eval('#uploads', (u) =>
      [...u.querySelectorAll('.upload.error .state')].map((s) => s.textContent).join('; ')).catch(() => '');
    if (uploadError) fail(`upload failed: ${uploadError}`);
    const now = await page.$eval(row, (r) => r.dataset.status).catch(() => '');
    if (now !== status) { status = now; if (now) log(`${name} status: ${now}`); }
    if (status === 'indexed') break;
    if (status === 'failed') {
      fail(`ingestion failed: ${await page.$eval(row, (r) => r.textContent.trim()).catch(() => '?')}`);
    }
    if (Date.now() > deadline) fail(`${name} was not indexed within ${INDEX_MS / 1000} s (status: ${status || 'no row'})`);
    await page.waitForTimeout(250);
  }
}

function summarize(xs) {
  if (xs.length <= 12) return xs.join(' ');
  return `${xs.slice(0, 6).join(' ')} … ${xs.slice(-6).join(' ')}`;
}

try {
  await run();
  clearTimeout(killer);
  await finish(0, `PASS: ${source} indexed, answer streamed, supporting span highlighted (${((Date.now() - started) / 1000).toFixed(1)} s)`);
} catch (e) {
  clearTimeout(killer);
  if (!finishing) await screenshot();
  const extra = problems.length && !(e instanceof Failure && e.message.includes('reported errors'))
    ? `\n  page errors:\n  ${problems.join('\n  ')}` : '';
  await finish(1, `FAIL: ${e instanceof Failure ? e.message : e.stack || e}${extra}`);
}
