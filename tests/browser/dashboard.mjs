// Drives the walfleet dashboard in Debian's headless chromium (playwright-core, no browser
// download) and asserts what a person would check. Started by tests/it/dashboard.rs, which
// runs the fleet; the two talk over stdio: this script prints `STEP <name>` and waits for one
// line on stdin before going on, and prints `PASS <check>` for every check that held.
//
// Environment: WF_BASE (dashboard URL), WF_TOKEN (admin token), WF_MODE (fleet | thousand),
// WF_EXPECT (JSON: {"project/db": "status"}), WF_SHOTS (directory for screenshots, optional),
// PLAYWRIGHT_CORE (path of playwright-core's index.mjs), CHROMIUM (default /usr/bin/chromium).
import { createInterface } from "node:readline";
import os from "node:os";
import path from "node:path";

const base = process.env.WF_BASE;
const token = process.env.WF_TOKEN;
const mode = process.env.WF_MODE || "fleet";
const shots = process.env.WF_SHOTS || "";
const pw = process.env.PLAYWRIGHT_CORE || path.join(os.homedir(), ".cache/walfleet/npm/node_modules/playwright-core/index.mjs");
const { chromium } = await import(pw);

const lines = createInterface({ input: process.stdin });
const queue = [];
let waiting = null;
lines.on("line", (l) => { if (waiting) { const w = waiting; waiting = null; w(l); } else queue.push(l); });
function step(name) {
  console.log(`STEP ${name}`);
  return new Promise((resolve) => { if (queue.length) resolve(queue.shift()); else waiting = resolve; });
}
function pass(what) { console.log(`PASS ${what}`); }
function fail(what) { throw new Error(what); }

const T = 60_000;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const errors = [];
function watch(page, label) {
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${label} ${page.url()}: ${m.text()}`); });
  page.on("pageerror", (e) => errors.push(`${label} ${page.url()}: ${e.message}`));
}
async function shot(page, name) {
  if (!shots) return;
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
}

async function signIn(ctx) {
  const page = await ctx.newPage();
  watch(page, "main");
  await page.goto(base + "/");
  if (!page.url().includes("/login")) fail(`an anonymous visit to / was not sent to the login page: ${page.url()}`);
  await shot(page, "login");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(base + "/"), page.click("button[type=submit]")]);
  const cookies = await ctx.cookies();
  const c = cookies.find((x) => x.name === "walfleet_session");
  if (!c || !c.httpOnly || c.sameSite !== "Strict") fail(`session cookie not HttpOnly/SameSite=Strict: ${JSON.stringify(c)}`);
  pass("login with the admin token (HttpOnly, SameSite=Strict cookie)");
  return page;
}

async function wrongToken() {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base + "/");
  await page.fill("#token", "wfadmin_wrong_0000000000000000");
  await page.click("button[type=submit]");
  await page.waitForSelector("p.error");
  const html = await page.content();
  if (await page.locator("table.fleet").count() > 0 || /data-db=/.test(html)) fail("a wrong token got the fleet table");
  for (const db of Object.keys(JSON.parse(process.env.WF_EXPECT || "{}"))) {
    if (html.includes(db.split("/")[1] + "<") || html.includes(`data-db="${db}"`)) fail(`a wrong token saw ${db}`);
  }
  for (const url of ["/", "/events", "/proof", "/db/shop/app"]) {
    const r = await ctx.request.get(base + url, { headers: { Authorization: "Bearer wfadmin_wrong_0000", "X-Live": "1" }, maxRedirects: 0 });
    if (r.status() !== 401) fail(`GET ${url} with a wrong bearer token answered ${r.status()}`);
    const body = await r.text();
    if (body.includes("data-db") || body.includes("<table")) fail(`GET ${url} with a wrong token returned fleet data`);
  }
  const anon = await ctx.request.get(base + "/", { headers: { "X-Live": "1" }, maxRedirects: 0 });
  if (anon.status() !== 401) fail(`an anonymous live refresh answered ${anon.status()}`);
  await ctx.close();
  pass("a wrong token gets no fleet data (login page, 401)");
}

async function fleetStatuses(page) {
  const expect = JSON.parse(process.env.WF_EXPECT || "{}");
  await page.goto(base + "/");
  for (const [db, status] of Object.entries(expect)) {
    const row = page.locator(`tr[data-db="${db}"]`);
    await row.waitFor({ timeout: T });
    const got = await row.getAttribute("data-status");
    if (got !== status) fail(`fleet view: ${db} is ${got}, expected ${status}`);
    const badge = (await row.locator(".badge").innerText()).trim();
    if (badge !== status) fail(`fleet view: ${db} shows badge ${badge}, expected ${status}`);
  }
  const rows = await page.locator("table.fleet tbody tr").count();
  if (rows !== Object.keys(expect).length) fail(`fleet view lists ${rows} databases, expected ${Object.keys(expect).length}`);
  // Sorting and filtering.
  await page.click("th a:has-text('Database')");
  await page.waitForURL(/sort=database/);
  const healthy = Object.values(expect).filter((s) => s === "healthy").length;
  await page.goto(base + "/?status=healthy");
  const n = await page.locator("table.fleet tbody tr").count();
  if (n !== healthy) fail(`status filter: ${n} rows, expected ${healthy}`);
  await page.goto(base + "/");
  await shot(page, "fleet");
  pass("the fleet view lists every database with the right status");
}

async function duplicateAppears(page) {
  await page.goto(base + "/events");
  await page.evaluate(() => { window.__noReload = 42; });
  const before = await page.locator('tr[data-kind="duplicate_instance"]').count();
  await step("duplicate");
  const row = page.locator('tr[data-kind="duplicate_instance"]').first();
  await page.waitForFunction((n) => document.querySelectorAll('tr[data-kind="duplicate_instance"]').length > n, before, { timeout: T });
  if ((await page.evaluate(() => window.__noReload)) !== 42) fail("the events page reloaded");
  const cells = await row.locator("td code").allInnerTexts();
  const [a, b] = cells.map((s) => s.trim());
  if (!a || !b || a === b) fail(`the duplicate event does not name two instances: ${JSON.stringify(cells)}`);
  const msg = await row.locator("td.msg").innerText();
  if (!msg.includes(a) || !msg.includes(b)) fail(`the duplicate message does not name both instances: ${msg}`);
  console.log(`DUPLICATE ${a} ${b}`);
  await step("duplicate-checked");
  await shot(page, "events");
  pass("a second instance's duplicate event appears without a reload, naming both instances");
}

async function lineageAfterHandoff(page) {
  const reply = await step("handoff");
  const gen = reply.split(" ")[1];
  await page.goto(base + "/db/shop/app");
  await page.evaluate(() => { window.__noReload = 7; });
  await page.waitForSelector(`svg.lineage rect.bar.live[data-generation="${gen}"]`, { timeout: T });
  if ((await page.evaluate(() => window.__noReload)) !== 7) fail("the database page reloaded");
  const sealed = await page.locator("svg.lineage rect.bar.sealed").count();
  if (sealed < 1) fail("the lineage shows no sealed generation after the handoff");
  const text = await page.locator("svg.lineage").textContent();
  if (!/from gen \d+ @ tx \d+/.test(text)) fail(`the new generation does not name its fork point: ${text}`);
  pass(`the lineage view shows the new generation ${gen} after the handoff`);
}

async function drillFromUi(page) {
  await page.goto(base + "/db/shop/app");
  const before = await page.locator('tr[data-kind="drill_passed"]').count();
  await Promise.all([page.waitForURL(base + "/db/shop/app"), page.click("button:has-text('Run a drill now')")]);
  const nowDrills = await page.locator('tr[data-kind="drill_passed"]').count();
  if (nowDrills <= before) fail(`no new drill_passed event after the click (${before} -> ${nowDrills})`);
  const facts = await page.locator("dl.facts").innerText();
  if (!/Last drill\s*passed/.test(facts)) fail(`the drill result is not shown: ${facts}`);
  const ev = page.locator('tr[data-kind="drill_passed"]').first();
  await ev.waitFor({ timeout: T });
  const msg = await ev.locator("td.msg").innerText();
  if (!msg.includes("checksum matches")) fail(`the drill event does not say the checksum matched: ${msg}`);
  await page.waitForSelector("svg.axis circle.drill.good", { timeout: T });
  // Pick the drill's point on the axis: the commands name its transaction.
  await page.click("svg.axis circle.drill.good");
  await page.waitForSelector('.commands[data-pick^="tx"]', { timeout: T });
  const cmd = await page.locator(".commands pre").first().innerText();
  if (!/^walfleet restore shop\/app --txid \d+ --output /.test(cmd)) fail(`restore command for a picked drill: ${cmd}`);
  // Pick a time on the axis.
  const box = await page.locator("svg.axis").boundingBox();
  await page.mouse.click(box.x + box.width * 0.5, box.y + 20);
  await page.waitForSelector('.commands[data-pick]:not([data-pick^="tx"]):not([data-pick="latest"])', { timeout: T });
  const cmd2 = await page.locator(".commands pre").first().innerText();
  if (!/--timestamp \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ --output/.test(cmd2)) fail(`restore command for a picked time: ${cmd2}`);
  await shot(page, "database");
  await page.goto(base + "/proof");
  const row = page.locator('tr[data-db="shop/app"]');
  await row.waitFor({ timeout: T });
  const proofText = await row.innerText();
  if (!/proven/.test(proofText) || !/tx \d+/.test(proofText)) fail(`proof of persistence for shop/app: ${proofText}`);
  await shot(page, "proof");
  pass("a drill started from the UI appears with its result (and as proof of persistence)");
}

async function csrfRefused(ctx, page) {
  const count = async () => {
    const r = await ctx.request.get(base + "/events?project=shop&database=app&kind=drill_passed", { headers: { "X-Live": "1" } });
    return ((await r.text()).match(/data-kind="drill_passed"/g) || []).length;
  };
  const before = await count();
  const noToken = await ctx.request.post(base + "/db/shop/app/drill", { form: { policy: "x" }, headers: { Origin: base }, maxRedirects: 0 });
  if (noToken.status() !== 403) fail(`a POST without the CSRF token answered ${noToken.status()}`);
  await page.goto(base + "/db/shop/app");
  const csrf = await page.locator('form.action input[name="csrf"]').first().inputValue();
  const wrong = await ctx.request.post(base + "/db/shop/app/drill", { form: { csrf: csrf.replace(/.$/, (c) => (c === "0" ? "1" : "0")) }, headers: { Origin: base }, maxRedirects: 0 });
  if (wrong.status() !== 403) fail(`a POST with a wrong CSRF token answered ${wrong.status()}`);
  const evil = await ctx.request.post(base + "/db/shop/app/drill", { form: { csrf }, headers: { Origin: "http://evil.example" }, maxRedirects: 0 });
  if (evil.status() !== 403) fail(`a cross-origin POST answered ${evil.status()}`);
  const after = await count();
  if (after !== before) fail(`a refused POST ran a drill (${before} -> ${after} drill_passed events)`);
  pass("a state-changing POST without the CSRF token is refused");
}

async function fleet() {
  await wrongToken();
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await signIn(ctx);
  await fleetStatuses(page);
  await duplicateAppears(page);
  await lineageAfterHandoff(page);
  await drillFromUi(page);
  await csrfRefused(ctx, page);
  await page.goto(base + "/db/shop/app");
  await shot(page, "database");
  if (errors.length) fail(`console errors:\n${errors.join("\n")}`);
  pass("no console errors on any page");
}

async function thousand() {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await signIn(ctx);
  const want = Number(process.env.WF_ROWS || "1000");
  const started = Date.now();
  await page.goto(base + "/");
  const rows = await page.locator("table.fleet tbody tr").count();
  if (rows < want) fail(`the fleet view shows ${rows} rows, expected at least ${want}`);
  console.log(`RENDERED ${rows} rows in ${Date.now() - started} ms`);
  // Usable: sort by a column, filter, and a live refresh replaces the region.
  await Promise.all([page.waitForURL(/sort=lag/), page.click("th a:has-text('Lag')")]);
  const sorted = await page.locator("table.fleet tbody tr").count();
  if (sorted !== rows) fail(`sorted view shows ${sorted} rows, not ${rows}`);
  await page.selectOption("select[name=project]", { index: 1 });
  await page.waitForURL(/project=/);
  await page.evaluate(() => { document.getElementById("live").dataset.marker = "old"; document.querySelector("#live .counts").setAttribute("data-old", "1"); });
  await page.waitForFunction(() => !document.querySelector("#live .counts[data-old]"), null, { timeout: T });
  pass(`the fleet view with ${rows} databases renders, sorts, filters and refreshes`);
  if (errors.length) fail(`console errors:\n${errors.join("\n")}`);
  pass("no console errors on any page");
}

try {
  if (mode === "thousand") await thousand(); else await fleet();
  console.log("DONE");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  await browser.close().catch(() => {});
  process.exit(1);
}
