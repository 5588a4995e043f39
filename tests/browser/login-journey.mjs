#!/usr/bin/env node
// The login journey of a real browser through Envoy (tests/login/browser.rs runs it): headless
// Chromium, driven by the npm package playwright-core, opens a protected page, is sent to
// heimdall's login and on to the OpenID provider, signs in, consents, and lands back on the page;
// then it logs out with a form POST to /auth/logout, confirms the provider's sign-out, and is
// sent to the login again when it comes back to the page.
//
// Environment:
//   START_URL            the protected page, through Envoy (required)
//   LOGIN_USER           the account to sign in as (required)
//   LOGIN_PASSWORD       the password typed into the provider's form (default dev-password)
//   CHROMIUM             the browser's executable (required; playwright-core downloads none)
//   HEIMDALL_NPM_MODULES the node_modules directory holding playwright-core
//                        (default <repo>/.tools/npm/node_modules)
//   JOURNEY_TIMEOUT_MS   the whole journey's deadline (default 45000)
//   STEP_TIMEOUT_MS      each navigation's and each action's deadline (default 10000)
//   JOURNEY_ARTIFACTS    a directory a failing journey leaves failure.png and failure.html in
//
// It prints one line of JSON to stdout:
//   {"browser": "<version>",
//    "login":  {"url", "status", "content_type", "echo", "visited", "cookies", "sent_to_start"},
//    "logout": {"url", "login_form", "visited", "cookies", "sent_to_start"},
//    "blocked": ["<host:port>", ...]}
// where `visited` lists the main frame's navigations, redirects included ({method, url, status,
// location}), `cookies` every cookie the browser holds for START_URL's host (name, domain, path,
// httpOnly, secure, sameSite, and the first nine characters of the value), `sent_to_start` the
// names of those it sends with a request for START_URL, and `echo` what the echo upstream
// answered (method, path and the headers it received; the Cookie header reduced to the names of
// its cookies, so no token is printed). `blocked` lists where the browser tried to go beyond
// loopback, each host once (Chromium's own update, account and autofill services; the provider's
// pages ask for web fonts): the browser's only proxy is a
// sinkhole of this script on loopback that answers every request 502 and every CONNECT by
// closing, and Chromium bypasses proxies for loopback only, so nothing leaves the machine.
// Failures go to stderr, with exit status 1.

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value.trim() === '') {
    if (fallback === undefined) {
      throw new Error(`${name} is required`);
    }
    return fallback;
  }
  return value.trim();
}

function millis(name, fallback) {
  const value = Number(env(name, String(fallback)));
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive number of milliseconds`);
  }
  return value;
}

const here = dirname(fileURLToPath(import.meta.url));
const startUrl = new URL(env('START_URL'));
const user = env('LOGIN_USER');
const password = env('LOGIN_PASSWORD', 'dev-password');
const executablePath = env('CHROMIUM');
const modules = resolve(
  env('HEIMDALL_NPM_MODULES', join(here, '..', '..', '.tools', 'npm', 'node_modules')),
);
const deadline = millis('JOURNEY_TIMEOUT_MS', 45000);
const stepTimeout = millis('STEP_TIMEOUT_MS', 10000);
const artifacts = process.env.JOURNEY_ARTIFACTS;
// How many pages the provider may show in a row (login, consent, sign-out) before it is a loop.
const MAX_PROVIDER_PAGES = 4;

// playwright-core lives outside this script's module resolution: resolve it from its directory.
const { chromium } = createRequire(join(modules, 'heimdall-journey.cjs'))('playwright-core');

let browser;
let page;
let sinkhole;
const blocked = new Set();
let phase = 'launch';
const visited = [];

function fail(message) {
  throw new Error(`${phase}: ${message}`);
}

// The main frame's navigations, each redirect included.
function record(response) {
  const request = response.request();
  if (!request.isNavigationRequest() || request.frame() !== page.mainFrame()) {
    return;
  }
  const entry = { method: request.method(), url: response.url(), status: response.status() };
  const location = response.headers().location;
  if (location !== undefined) {
    entry.location = new URL(location, response.url()).href;
  }
  visited.push(entry);
}

// Runs `action`, which starts a navigation, and waits until the new page has loaded.
async function navigating(action) {
  await Promise.all([
    page.waitForNavigation({ timeout: stepTimeout, waitUntil: 'load' }),
    action(),
  ]);
}

async function text(selector) {
  const element = await page.$(selector);
  return element === null ? undefined : element.innerText({ timeout: stepTimeout });
}

async function pageText() {
  const body = (await text('body')) ?? '';
  return body.replace(/\s+/g, ' ').trim().slice(0, 300);
}

// What the provider shows: its login form, its consent form, its sign-out confirmation, or
// something else.
async function providerPage() {
  if ((await page.$('form input[name="login"]')) !== null) {
    return 'login';
  }
  if ((await page.$('form input[name="prompt"][value="consent"]')) !== null) {
    return 'consent';
  }
  if ((await page.$('button[name="logout"][value="yes"]')) !== null) {
    return 'logout';
  }
  return 'other';
}

async function cookies() {
  const all = await page.context().cookies();
  const sent = await page.context().cookies(startUrl.href);
  return {
    cookies: all
      .filter((c) => c.domain === startUrl.hostname)
      .map((c) => ({
        name: c.name,
        domain: c.domain,
        path: c.path,
        httpOnly: c.httpOnly,
        secure: c.secure,
        sameSite: c.sameSite,
        value_prefix: c.value.slice(0, 9),
      })),
    sent_to_start: sent.map((c) => c.name).sort(),
  };
}

// The echo upstream's answer on the page, the Cookie header reduced to its cookies' names.
async function echoed() {
  const body = (await text('pre')) ?? (await text('body'));
  let echo;
  try {
    echo = JSON.parse(body);
  } catch {
    fail(`the page at ${page.url()} is not the echo upstream's JSON: ${await pageText()}`);
  }
  if (echo.headers && typeof echo.headers.cookie === 'string') {
    echo.headers.cookie = echo.headers.cookie
      .split(';')
      .map((pair) => pair.split('=')[0].trim())
      .filter((name) => name !== '');
  }
  return echo;
}

async function login() {
  phase = 'login';
  visited.length = 0;
  const first = await page.goto(startUrl.href, { timeout: stepTimeout, waitUntil: 'load' });
  if (first === null) {
    fail(`no response for ${startUrl.href}`);
  }
  let signedIn = false;
  for (let shown = 0; new URL(page.url()).origin !== startUrl.origin; shown += 1) {
    if (shown >= MAX_PROVIDER_PAGES) {
      fail(`still away from ${startUrl.origin} after ${shown} pages, at ${page.url()}`);
    }
    const kind = await providerPage();
    if (kind === 'login' && !signedIn) {
      signedIn = true;
      await page.fill('input[name="login"]', user, { timeout: stepTimeout });
      await page.fill('input[type="password"]', password, { timeout: stepTimeout });
      await navigating(() => page.click('form button[type="submit"]', { timeout: stepTimeout }));
    } else if (kind === 'consent') {
      await navigating(() => page.click('form button[type="submit"]', { timeout: stepTimeout }));
    } else if (kind === 'login') {
      fail(`the provider refused the login of '${user}': ${await pageText()}`);
    } else {
      fail(`unexpected page at ${page.url()}: ${await pageText()}`);
    }
  }
  const last = visited.at(-1);
  return {
    url: page.url(),
    status: last?.status,
    content_type: await page.evaluate(() => document.contentType),
    echo: await echoed(),
    visited: [...visited],
    ...(await cookies()),
  };
}

async function logout() {
  phase = 'logout';
  visited.length = 0;
  // What a "Log out" button of the application does: a same-origin form POST.
  await navigating(() => page.evaluate(() => {
    const form = document.createElement('form');
    form.method = 'post';
    form.action = '/auth/logout';
    document.body.appendChild(form);
    form.submit();
  }));
  let loginForm = false;
  for (let shown = 0; !loginForm; shown += 1) {
    if (shown >= MAX_PROVIDER_PAGES) {
      fail(`no login form after ${shown} pages, at ${page.url()}`);
    }
    const kind = await providerPage();
    if (kind === 'logout') {
      await navigating(() => page.click('button[name="logout"][value="yes"]', { timeout: stepTimeout }));
    } else if (kind === 'login') {
      loginForm = true;
    } else {
      fail(`unexpected page at ${page.url()}: ${await pageText()}`);
    }
  }
  return {
    url: page.url(),
    login_form: loginForm,
    visited: [...visited],
    ...(await cookies()),
  };
}

// The browser's proxy: everything that is not loopback ends here, recorded and refused.
async function startSinkhole() {
  const server = createServer((request, response) => {
    const url = new URL(request.url);
    blocked.add(`${url.hostname}:${url.port || 80}`);
    response.writeHead(502, { 'content-type': 'text/plain', connection: 'close' });
    response.end('not on loopback: refused\n');
  });
  server.on('connect', (request, socket) => {
    blocked.add(request.url);
    socket.destroy();
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

async function journey() {
  sinkhole = await startSinkhole();
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      // Root (CI) needs --no-sandbox; a small /dev/shm (containers) needs the next one.
      '--no-sandbox',
      '--disable-dev-shm-usage',
      // Chromium bypasses a proxy for loopback (its implicit rule), so only what leaves
      // loopback goes to the sinkhole; no name is resolved but through it.
      `--proxy-server=http://127.0.0.1:${sinkhole.address().port}`,
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
    timeout: stepTimeout,
  });
  const context = await browser.newContext();
  context.setDefaultTimeout(stepTimeout);
  context.setDefaultNavigationTimeout(stepTimeout);
  page = await context.newPage();
  page.on('response', record);
  const loggedIn = await login();
  const loggedOut = await logout();
  return { browser: browser.version(), login: loggedIn, logout: loggedOut, blocked: [...blocked].sort() };
}

async function leaveArtifacts() {
  if (!artifacts || page === undefined) {
    return;
  }
  try {
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'failure.png'), timeout: 2000 });
    writeFileSync(join(artifacts, 'failure.html'), await page.content());
  } catch {
    // A page that cannot be captured leaves what it could.
  }
}

let timer;
const overdue = new Promise((_, reject) => {
  timer = setTimeout(() => reject(new Error(`the journey took longer than ${deadline} ms`)), deadline);
});
let code = 0;
try {
  const result = await Promise.race([journey(), overdue]);
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (error) {
  code = 1;
  process.stderr.write(`login-journey: ${error?.stack ?? error}\n`);
  process.stderr.write(`login-journey: in ${phase}, at ${page?.url() ?? '(no page)'}\n`);
  process.stderr.write(`login-journey: visited ${JSON.stringify(visited)}\n`);
  await leaveArtifacts();
} finally {
  clearTimeout(timer);
  if (browser !== undefined) {
    await Promise.race([browser.close(), new Promise((r) => { setTimeout(r, 3000); })]);
  }
  sinkhole?.close();
}
process.exit(code);
