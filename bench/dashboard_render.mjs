// Time to first render of the fleet page in headless chromium, then WF_PAGES pages left open
// (each refreshing its live region) for WF_HOLD_S seconds. Prints one JSON line when the
// measurements are done and the pages are open. Used by bench/dashboard.py.
import os from "node:os";
import path from "node:path";

const pw = process.env.PLAYWRIGHT_CORE || path.join(os.homedir(), ".cache/walfleet/npm/node_modules/playwright-core/index.mjs");
const { chromium } = await import(pw);
const base = process.env.WF_BASE;
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
const login = await ctx.newPage();
await login.goto(base + "/login");
await login.fill("#token", process.env.WF_TOKEN);
await Promise.all([login.waitForURL(base + "/"), login.click("button[type=submit]")]);
const fcp = [], dcl = [];
for (let i = 0; i < 5; i++) {
  const page = await ctx.newPage();
  await page.goto(base + "/", { waitUntil: "load" });
  const t = await page.evaluate(() => {
    const p = performance.getEntriesByName("first-contentful-paint")[0];
    const n = performance.getEntriesByType("navigation")[0];
    return { fcp: p ? p.startTime : -1, dcl: n.domContentLoadedEventEnd };
  });
  fcp.push(t.fcp); dcl.push(t.dcl);
  await page.close();
}
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
await login.close();
const pages = [];
for (let i = 0; i < Number(process.env.WF_PAGES || "5"); i++) {
  const p = await ctx.newPage();
  await p.goto(base + "/");
  pages.push(p);
}
console.log(JSON.stringify({ loads: fcp.length, fcp_ms: median(fcp), dcl_ms: median(dcl) }));
await new Promise((r) => setTimeout(r, Number(process.env.WF_HOLD_S || "75") * 1000));
await browser.close();
