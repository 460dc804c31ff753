// The admin index's dashboard: one JSON request per change of range or filter,
// drawn with the vendored Chart.js (static/vendor/chartjs). No network beyond the gateway.
"use strict";
(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const state = { range: "24h", start: "", end: "", tenant: "", provider: "", model: "" };
  const charts = {};
  const $ = (id) => document.getElementById(id);

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value === null || value === undefined ? "–" : String(value);
    if (cls) el.className = cls;
    return el;
  }
  const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
  const money = (s) => (s === null || s === undefined ? "–" : "$" + s.replace(/(\.\d*?[1-9])0+$|\.0+$/, "$1"));
  const ms = (n) => (n === null || n === undefined ? "–" : n + " ms");
  const percent = (r) => (100 * r).toFixed(r > 0 && r < 0.001 ? 3 : 1) + "%";

  function label(iso, step) {
    const d = new Date(iso);
    if (step === "day") return d.toLocaleDateString();
    if (step === "minute") return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit" });
  }

  function draw(id, type, labels, datasets, tick) {
    if (charts[id]) {
      charts[id].data.labels = labels;
      charts[id].data.datasets = datasets;
      charts[id].update();
      return;
    }
    charts[id] = new Chart($(id), {
      type: type,
      data: { labels: labels, datasets: datasets },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 interaction: { mode: "index", intersect: false },
                 scales: { y: { beginAtZero: true, ticks: tick ? { callback: tick } : {} } } },
    });
  }

  function fillSelect(id, options, current) {
    const select = $(id);
    const keep = select.value || current;
    while (select.options.length > 1) select.remove(1);
    for (const o of options) {
      const value = typeof o === "object" ? String(o.id) : o;
      const option = new Option(typeof o === "object" ? o.name : o, value);
      select.add(option);
    }
    select.value = keep;
  }

  function table(id, rows, cells) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = text("td", "Nothing in this range.");
      td.colSpan = $(id).tHead.rows[0].cells.length;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const cell of cells(row)) tr.append(cell);
      body.append(tr);
    }
  }

  function render(data) {
    const t = data.totals;
    const shown = { requests: number(t.requests), tokens: number(t.tokens), cost_usd: money(t.cost_usd),
                    cache_hit_rate: percent(t.cache_hit_rate), cost_saved_usd: money(t.cost_saved_usd),
                    cached_tokens: number(t.cached_tokens), cache_write_tokens: number(t.cache_write_tokens),
                    reasoning_tokens: number(t.reasoning_tokens), error_rate: percent(t.error_rate), p50_ms: ms(t.p50_ms), p95_ms: ms(t.p95_ms) };
    for (const el of root.querySelectorAll("[data-total]")) el.textContent = shown[el.dataset.total];

    const s = data.series;
    const labels = s.labels.map((l) => label(l, data.range.step));
    draw("chart-requests", "bar", labels, [
      { label: "requests", data: s.requests, backgroundColor: "#417690" },
      { label: "errors", data: s.errors, backgroundColor: "#ba2121" },
    ]);
    draw("chart-tokens", "line", labels, [{ label: "tokens", data: s.tokens, borderColor: "#79aec8", fill: false }]);
    // The forecast line: the current daily rate per step, on to the month's end on a daily chart.
    const f = data.forecast;
    const costLabels = labels.concat(f.future_labels.map((l) => label(l, data.range.step)));
    const rate = Number(f.per_step_usd);
    draw("chart-cost", "line", costLabels, [
      { label: "cost (USD)", data: s.cost_usd.map(Number), borderColor: "#2e7d32", fill: false },
      { label: "forecast at the current rate", data: costLabels.map(() => rate), borderColor: "#e65100",
        borderDash: [6, 4], pointRadius: 0, fill: false }],
      (v) => "$" + (v === 0 ? "0" : Number(v.toPrecision(2)).toString()));
    const dollars = (v) => "$" + Number(v).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    $("dashboard-forecast").textContent = dollars(f.month_end_usd);
    $("dashboard-forecast-range").textContent = dollars(f.low_usd) + " – " + dollars(f.high_usd) + " by " + f.last_day;
    table("dashboard-anomalies", data.anomalies, (a) => {
      const link = document.createElement("a");
      link.href = root.dataset.anomalyUrl.replace("/0/", "/" + a.id + "/");
      link.textContent = "review";
      const td = document.createElement("td");
      td.append(link);
      return [text("td", a.tenant), text("td", a.key ? a.key + "…" : "(no key)"), text("td", a.model),
              text("td", new Date(a.started_at).toLocaleString() + (a.hours > 1 ? " (" + a.hours + " h)" : "")),
              text("td", money(a.spend_usd), "gw-bad"), text("td", money(a.baseline_spend_usd)), td];
    });
    draw("chart-latency", "line", labels, [
      { label: "p50", data: s.p50_ms, borderColor: "#417690", spanGaps: true },
      { label: "p95", data: s.p95_ms, borderColor: "#e65100", spanGaps: true },
    ]);

    for (const name of ["tenant", "provider", "model", "route", "batch"]) {
      table("by-" + name, data.by[name], (r) => [
        text("td", r.name), text("td", number(r.requests)), text("td", number(r.tokens)), text("td", money(r.cost_usd)),
        text("td", percent(r.cache_hit_rate)), text("td", money(r.cost_saved_usd)),
        text("td", percent(r.error_rate)), text("td", ms(r.p50_ms)), text("td", ms(r.p95_ms)),
      ]);
    }
    table("dashboard-health", data.health, (h) => [
      text("td", h.provider), text("td", h.model),
      text("td", h.ok === null ? "not checked yet" : (h.ok ? "ok" : "failed" + (h.error ? ": " + h.error : "")) +
           " at " + new Date(h.checked_at).toLocaleString(), h.ok === false ? "gw-bad" : ""),
      text("td", ms(h.latency_ms)),
      text("td", h.breaker, h.breaker === "closed" ? "" : "gw-bad"),
    ]);
    table("dashboard-budgets", data.budgets, (b) => [
      text("td", b.tenant), text("td", b.key || "(whole tenant)"),
      text("td", (b.kind === "budget" ? money(b.allowed) : number(b.allowed) + " tokens") + " per " + b.period +
           (b.model ? " on " + b.model : "")),
      text("td", b.kind === "budget" ? money(b.used) : number(b.used)),
      text("td", b.percent + "%", b.warn ? "gw-bad" : ""),
    ]);
    table("dashboard-guardrails", data.guardrails || [], (g) => [
      text("td", g.tenant), text("td", g.check), text("td", number(g.blocked)), text("td", number(g.redacted)),
      text("td", number(g.flagged)), text("td", number(g.refused) + " / " + number(g.failed_open)),
    ]);
    fillSelect("dashboard-tenant", data.filters.tenants, state.tenant);
    fillSelect("dashboard-provider", data.filters.providers, state.provider);
    fillSelect("dashboard-model", data.filters.models, state.model);
    root.dataset.loaded = String(Date.now());
    root.dataset.shown = state.start ? "custom" : state.range;
  }

  // Answers can arrive out of order (the first load's after a click on another range): only the
  // newest request's answer is drawn, so the page never shows one range's figures under another's label.
  let latest = 0;

  async function load() {
    const asked = ++latest;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v) params.set(k, v);
    if (state.start) params.delete("range");
    const error = $("dashboard-error");
    try {
      const response = await fetch(root.dataset.url + "?" + params, { credentials: "same-origin" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      if (asked !== latest) return;
      error.hidden = true;
      render(body);
    } catch (e) {
      error.textContent = "The dashboard could not load: " + e.message;
      error.hidden = false;
    }
  }

  const utc = (local) => (local ? new Date(local).toISOString() : "");
  for (const button of root.querySelectorAll(".gw-range")) {
    button.addEventListener("click", () => {
      for (const b of root.querySelectorAll(".gw-range")) b.classList.toggle("selected", b === button);
      Object.assign(state, { range: button.dataset.range, start: "", end: "" });
      $("dashboard-start").value = $("dashboard-end").value = "";
      load();
    });
  }
  $("dashboard-apply").addEventListener("click", () => {
    if (!$("dashboard-start").value) return;
    for (const b of root.querySelectorAll(".gw-range")) b.classList.remove("selected");
    Object.assign(state, { start: utc($("dashboard-start").value), end: utc($("dashboard-end").value) });
    load();
  });
  for (const name of ["tenant", "provider", "model"]) {
    $("dashboard-" + name).addEventListener("change", (e) => { state[name] = e.target.value; load(); });
  }
  load();
  setInterval(() => { if (!document.hidden) load(); }, 60000);
})();
