// walfleet dashboard: refreshes the page's #live region every few seconds (one request per
// page per interval, none while the tab is hidden), picks restore points on the time axis and
// submits filter forms on change. No framework, no external requests.
"use strict";
(function () {
  const live = document.getElementById("live");
  const state = document.getElementById("live-state");
  let last = null;
  let busy = false;

  async function refresh() {
    if (!live || busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(location.pathname + location.search, { headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store" });
      if (r.status === 401 || r.redirected) { location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search)); return; }
      if (!r.ok) throw new Error("status " + r.status);
      const html = await r.text();
      if (html !== last) { live.innerHTML = html; last = html; }
      if (state) { state.classList.remove("stale"); state.textContent = "live"; }
    } catch (e) {
      if (state) { state.classList.add("stale"); state.textContent = "reconnecting"; }
    } finally {
      busy = false;
    }
  }

  if (live) {
    const every = Number(live.dataset.every) || 5000;
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }

  function pick(params) {
    const u = new URL(location.href);
    u.searchParams.delete("at");
    u.searchParams.delete("txid");
    for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
    history.replaceState(null, "", u.pathname + u.search);
    refresh();
  }

  document.addEventListener("click", (ev) => {
    const drill = ev.target.closest && ev.target.closest("svg.axis .drill[data-txid]");
    if (drill) { pick({ txid: drill.dataset.txid }); return; }
    const axis = ev.target.closest && ev.target.closest("svg.axis");
    if (!axis) return;
    const box = axis.getBoundingClientRect();
    const vb = axis.viewBox.baseVal;
    const x = (ev.clientX - box.left) / box.width * vb.width;
    const left = Number(axis.dataset.left), right = Number(axis.dataset.right);
    const t0 = Number(axis.dataset.t0), t1 = Number(axis.dataset.t1);
    const f = Math.min(1, Math.max(0, (x - left) / (vb.width - left - right)));
    pick({ at: String(Math.round(t0 + f * (t1 - t0))) });
  });

  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    form.addEventListener("change", () => form.submit());
  }
})();
