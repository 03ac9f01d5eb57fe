// The HealthImaging copies dashboard: the runs list (index.html) and one run (run.html).
//
// Plain ES module, no build step. Every value from the API is inserted as text (textContent, attribute
// values through setAttribute on safe attributes only): ids and labels come from user manifests.
// The pages live inside Airflow's iframe; the API is behind Airflow's login (the _token cookie).

/** The dashboard's root URL (…/healthimaging/), from this module's own URL (…/healthimaging/static/dashboard.js). */
export const BASE = new URL("../", import.meta.url);
export const REFRESH_MS = 15000;
export const STATUSES = ["pending", "submitting", "submitted", "succeeded", "failed", "rejected", "skipped", "planned"];

// ------------------------------------------------------------------------------------------------ helpers

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status ? `HTTP ${status}: ` : ""}${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** GET a JSON document of the API (path relative to the dashboard root); throws ApiError with its detail. */
export async function api(path, params = {}) {
  const url = new URL(path, BASE);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch (err) {
    throw new ApiError(0, `the dashboard API could not be reached (${err.message})`);
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    let detail = body && body.detail !== undefined ? body.detail : text.slice(0, 300) || response.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    if (response.status === 401) detail = `${detail} (not logged in: log in to Airflow again)`;
    if (response.status === 403) detail = `${detail} (your Airflow user may not read these DAG runs)`;
    throw new ApiError(response.status, detail);
  }
  if (body === null) throw new ApiError(response.status, "the API answered something that is not JSON");
  return body;
}

/** An element with attributes and children; strings become text nodes, never HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "href") node.setAttribute("href", safeHref(v));
    else node.setAttribute(k, String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Only http(s) and relative links: a javascript: URL from the data never becomes a link. */
export function safeHref(value) {
  try {
    const url = new URL(String(value), document.baseURI);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : "#";
  } catch {
    return "#";
  }
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

export function fmtNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtPercent(value) {
  if (value === null || value === undefined) return "–";
  return `${fmtNumber(value, 2)} %`;
}

export function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  const d = new Date(Number(epoch) * 1000);
  if (Number.isNaN(d.getTime())) return "–";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "unknown";
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${s} s`;
}

export function fmtSeconds(value) {
  if (value === null || value === undefined) return "–";
  return `${fmtNumber(value, 1)} s`;
}

function statusChip(status) {
  return el("span", { class: `status status-${STATUSES.includes(status) ? status : "other"}`, text: status ?? "–" });
}

function inFlight(counts) {
  return (counts.submitting || 0) + (counts.submitted || 0);
}

function runHref(dagId, runId) {
  return new URL(`runs/${encodeURIComponent(dagId)}/${encodeURIComponent(runId)}`, BASE).href;
}

function table(headers, rows, { empty = "Nothing to show.", id } = {}) {
  if (!rows.length) return el("p", { class: "empty", id, text: empty });
  return el(
    "table",
    { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    el(
      "tbody",
      {},
      rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))),
    ),
  );
}

function mono(value) {
  return el("code", { text: value ?? "–" });
}

// --------------------------------------------------------------------------------------- messages, theme

/** Shows an error (an ApiError's status and detail) in the page's message area, instead of a blank page. */
export function showError(where, err) {
  const box = byId("message");
  const text = err instanceof ApiError ? err.message : `${err && err.message ? err.message : err}`;
  box.hidden = false;
  box.append(el("p", { class: "error", role: "alert" }, el("strong", { text: `${where}: ` }), text));
}

function clearMessages() {
  const box = byId("message");
  box.replaceChildren();
  box.hidden = true;
}

/** The ledger's state: its message, prominent, when it is missing or unreachable. Returns whether it is ok. */
async function showLedger() {
  const node = byId("ledger");
  try {
    const ledger = await api("api/ledger");
    if (ledger.ok) {
      clear(node, el("span", { class: "ok-dot", "aria-hidden": "true" }), `Ledger: ${ledger.backend ?? "?"} `, mono(ledger.source));
      return true;
    }
    clear(node, el("span", { class: "bad-dot", "aria-hidden": "true" }), "Ledger unavailable");
    showError("The copy ledger cannot be read", new Error(ledger.message || "no message"));
    return false;
  } catch (err) {
    clear(node, el("span", { class: "bad-dot", "aria-hidden": "true" }), "Ledger state unknown");
    showError("Ledger", err);
    return false;
  }
}

/** Follows Airflow's light / dark mode (the parent page's html.dark), else the browser's preference. */
export function followTheme() {
  const apply = () => {
    let dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    try {
      const root = window.parent !== window ? window.parent.document.documentElement : null;
      if (root) {
        const scheme = root.style.colorScheme || "";
        dark = root.classList.contains("dark") || scheme === "dark" || (dark && !root.classList.contains("light"));
      }
    } catch {
      // another origin: keep the browser's preference
    }
    document.documentElement.dataset.theme = dark ? "dark" : "light";
    if (window.Chart) {
      window.Chart.defaults.color = dark ? "#d4d4d8" : "#27272a";
      window.Chart.defaults.borderColor = dark ? "rgba(255,255,255,0.15)" : "rgba(0,0,0,0.12)";
    }
  };
  apply();
  try {
    if (window.parent !== window) {
      new MutationObserver(apply).observe(window.parent.document.documentElement, {
        attributes: true,
        attributeFilter: ["class", "style"],
      });
    }
  } catch {
    // another origin
  }
  if (window.matchMedia) window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", apply);
  return apply;
}

/** Calls load() now and every REFRESH_MS while it returns true (a run is active); stops when it returns false. */
function autoRefresh(load) {
  let timer = null;
  const status = byId("refresh");
  const tick = async () => {
    timer = null;
    let active = false;
    try {
      active = await load();
    } catch (err) {
      showError("Refresh", err);
    }
    if (status) {
      status.textContent = active
        ? `Updated ${fmtTime(Date.now() / 1000)}; refreshing every ${REFRESH_MS / 1000} s while a run is active.`
        : `Updated ${fmtTime(Date.now() / 1000)}; no run is active, auto-refresh is off.`;
      status.dataset.active = active ? "true" : "false";
    }
    if (active) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  return () => timer && clearTimeout(timer);
}

// ----------------------------------------------------------------------------------------- index.html

function runsRow(run) {
  const c = run.counts || {};
  const progress = run.rows ? Math.round((100 * (run.accounted || 0)) / run.rows) : 0;
  return [
    el("td", {}, mono(run.dag_id)),
    el("td", {}, el("a", { href: runHref(run.dag_id, run.run_id), class: "run-link" }, run.run_id), run.active ? el("span", { class: "badge", text: "active" }) : null),
    el("td", { class: "num" }, fmtNumber(run.rows)),
    el(
      "td",
      {},
      el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": run.rows || 0, "aria-valuenow": run.accounted || 0 }, el("div", { class: "bar-fill", style: `width:${progress}%` })),
      el("span", { class: "small", text: `${fmtNumber(run.accounted)} of ${fmtNumber(run.rows)}` }),
    ),
    el(
      "td",
      { class: "by-status" },
      STATUSES.filter((s) => c[s]).map((s) => el("span", { class: `status status-${s}`, "data-status": s }, `${s} `, el("strong", { text: fmtNumber(c[s]) }))),
      inFlight(c) ? el("div", { class: "small", text: `${fmtNumber(inFlight(c))} in flight` }) : null,
    ),
    el("td", { class: "num" }, fmtNumber(run.copies_per_minute, 1)),
    el("td", { class: "num" }, fmtPercent(run.failure_percent)),
    el("td", { class: "time" }, fmtTime(run.started_at)),
    el("td", { class: "time" }, fmtTime(run.updated_at)),
    el("td", {}, run.airflow_url ? el("a", { href: run.airflow_url, target: "_top", rel: "noopener", text: "Airflow run ↗" }) : "–"),
  ];
}

async function loadRuns() {
  const data = await api("api/runs", { limit: 50 });
  const runs = data.runs || [];
  clear(
    byId("runs"),
    table(
      ["DAG", "Run", "Rows", "Accounted for", "Rows by status", "Copies / min", "Failure share", "Started", "Updated", "Airflow"],
      runs.map(runsRow),
      { id: "runs-table", empty: "No bulk-copy run in the ledger yet." },
    ),
  );
  return runs.some((r) => r.active);
}

function lineageRows(matches, { followBack = true } = {}) {
  return matches.map((m) => [
    el("td", {}, el("a", { href: runHref(m.dag_id, m.run_id), text: m.run_id }), el("div", { class: "small" }, mono(m.dag_id))),
    el("td", { class: "num" }, fmtNumber(m.row_number)),
    el("td", {}, m.label ?? "–"),
    el("td", {}, el("div", {}, mono(m.source_image_set_id)), el("div", { class: "small" }, "version ", mono(m.source_version_id), " in ", mono(m.datastore_id))),
    el(
      "td",
      {},
      el("div", {}, mono(m.destination_image_set_id)),
      el("div", { class: "small" }, "version ", mono(m.destination_version_id)),
      m.destination_image_set_arn ? el("div", { class: "small arn" }, mono(m.destination_image_set_arn)) : null,
    ),
    el("td", {}, statusChip(m.status)),
    el("td", {}, fmtTime(m.completed_at)),
    el("td", {}, m.verified === true ? "yes" : m.verified === false ? "no" : "–"),
    el("td", { class: "key" }, mono(m.copy_key)),
    el(
      "td",
      {},
      followBack && m.destination_image_set_id
        ? el("button", { type: "button", class: "follow", onclick: () => trace(m.datastore_id, m.destination_image_set_id) }, "Follow back")
        : "",
    ),
  ]);
}

const LINEAGE_HEADERS = ["Run", "Row", "Label", "Source (image set, version, data store)", "Destination (image set, version, ARN)", "Status", "Completed", "Verified", "Copy key", ""];

async function searchLineage(query) {
  const out = byId("lineage-results");
  clear(out, el("p", { class: "small", text: "Searching…" }));
  clear(byId("lineage-trace"));
  try {
    const data = await api("api/lineage", { q: query });
    const matches = data.matches || [];
    clear(
      out,
      el("p", { class: "small", id: "lineage-count", text: `${matches.length} match${matches.length === 1 ? "" : "es"} for “${query}”` }),
      table(LINEAGE_HEADERS, lineageRows(matches), { id: "lineage-table", empty: "No copy matches." }),
    );
  } catch (err) {
    clear(out);
    showError("Lineage look-up", err);
  }
}

async function trace(datastoreId, imageSetId) {
  const out = byId("lineage-trace");
  clear(out, el("p", { class: "small", text: "Following back…" }));
  try {
    const data = await api("api/lineage/trace", { datastore_id: datastoreId, image_set_id: imageSetId });
    const chain = data.chain || [];
    clear(
      out,
      el("h3", {}, "Lineage of ", mono(imageSetId)),
      el("p", { class: "small", text: "From this image set back to its source, and on when that source was itself a copy." }),
      table(LINEAGE_HEADERS, lineageRows(chain, { followBack: false }), { id: "trace-table", empty: "This image set is not the destination of any recorded copy." }),
    );
  } catch (err) {
    clear(out);
    showError("Lineage trace", err);
  }
}

async function loadAttention() {
  const minutes = Number(byId("attention-minutes").value) || 15;
  const data = await api("api/attention", { older_than_seconds: Math.round(minutes * 60) });
  const rows = data.rows || [];
  clear(
    byId("attention"),
    el("p", { class: "small", text: `Rows submitting or submitted for longer than ${fmtDuration(data.threshold_seconds)}: ${rows.length}` }),
    table(
      ["Run", "Row", "Status", "Data store", "Source image set", "Destination image set", "Since", "Claim"],
      rows.map((r) => [
        el("td", {}, el("a", { href: runHref(r.dag_id, r.run_id), text: r.run_id }), el("div", { class: "small" }, mono(r.dag_id))),
        el("td", { class: "num" }, fmtNumber(r.row_number)),
        el("td", {}, statusChip(r.status)),
        el("td", {}, mono(r.datastore_id)),
        el("td", {}, mono(r.source_image_set_id)),
        el("td", {}, mono(r.destination_image_set_id)),
        el("td", {}, fmtTime(r.since)),
        el("td", {}, r.claim === null || r.claim === undefined ? "–" : mono(typeof r.claim === "string" ? r.claim : JSON.stringify(r.claim))),
      ]),
      { id: "attention-table", empty: "Nothing needs attention." },
    ),
  );
}

export async function initIndex() {
  followTheme();
  byId("lineage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = byId("lineage-q").value.trim();
    if (q) searchLineage(q);
  });
  byId("attention-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAttention().catch((err) => showError("Needs attention", err));
  });
  const ledgerOk = await showLedger();
  if (!ledgerOk) {
    for (const id of ["runs", "attention"]) clear(byId(id), el("p", { class: "empty", text: "Not available: see the message above." }));
    return;
  }
  autoRefresh(async () => {
    clearMessages();
    const [active] = await Promise.all([
      loadRuns().catch((err) => {
        showError("Runs", err);
        return false;
      }),
      loadAttention().catch((err) => showError("Needs attention", err)),
    ]);
    return active;
  });
}

// ------------------------------------------------------------------------------------------- run.html

/** The run's dag_id and run_id from the page URL: …/healthimaging/runs/{dag_id}/{run_id} (or ?dag_id=&run_id=). */
export function runFromLocation(loc = window.location) {
  const params = new URLSearchParams(loc.search);
  if (params.get("dag_id") && params.get("run_id")) return { dagId: params.get("dag_id"), runId: params.get("run_id") };
  const parts = loc.pathname.split("/");
  const i = parts.lastIndexOf("runs");
  if (i < 0 || parts.length < i + 3) return null;
  const decode = (s) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  return { dagId: decode(parts[i + 1]), runId: decode(parts.slice(i + 2).join("/")) };
}

let chart = null;

/** Draws the quota dataset's value as a horizontal line across the whole chart area (not centre to centre). */
const quotaLine = {
  id: "quotaLine",
  afterDatasetsDraw(c) {
    const set = c.data.datasets[1];
    const value = set && set.data.find((v) => v !== null && v !== undefined);
    if (value === undefined || !c.isDatasetVisible(1)) return;
    const y = c.scales.y.getPixelForValue(value);
    const { left, right } = c.chartArea;
    const ctx = c.ctx;
    ctx.save();
    ctx.strokeStyle = set.borderColor;
    ctx.lineWidth = set.borderWidth;
    ctx.setLineDash(set.borderDash || []);
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(right, y);
    ctx.stroke();
    ctx.restore();
  },
};

function loadChartJs() {
  if (window.Chart) return Promise.resolve(window.Chart);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = new URL("static/vendor/chart.umd.min.js", BASE).href;
    script.onload = () => resolve(window.Chart);
    script.onerror = () => reject(new Error("the vendored Chart.js could not be loaded"));
    document.head.append(script);
  });
}

function fact(label, value, id) {
  return el("div", { class: "fact" }, el("div", { class: "fact-label", text: label }), el("div", { class: "fact-value", id }, value));
}

function renderRun(run) {
  const c = run.counts || {};
  const progress = run.rows ? (100 * (run.accounted || 0)) / run.rows : 0;
  clear(byId("run-title"), "Run ", mono(run.run_id), " of ", mono(run.dag_id), run.active ? el("span", { class: "badge", text: "active" }) : el("span", { class: "badge done", text: "finished" }));
  clear(
    byId("run-links"),
    el("a", { href: new URL("./", BASE).href, text: "← All runs" }),
    run.airflow_url ? el("a", { href: run.airflow_url, target: "_top", rel: "noopener", text: "Open the Airflow run ↗" }) : null,
  );
  clear(
    byId("progress"),
    el(
      "p",
      { class: "headline", id: "accounted" },
      el("span", { id: "accounted-count", text: String(run.accounted ?? 0) }),
      " of ",
      el("span", { id: "rows-count", text: String(run.rows ?? 0) }),
      " rows accounted for",
    ),
    el(
      "div",
      { class: "bar big", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": run.rows || 0, "aria-valuenow": run.accounted || 0, "aria-label": "rows accounted for" },
      el("div", { class: "bar-fill", style: `width:${progress.toFixed(1)}%` }),
    ),
    el(
      "div",
      { class: "chips", id: "status-counts" },
      STATUSES.map((s) => el("span", { class: `status status-${s}`, "data-status": s }, `${s} `, el("strong", { text: fmtNumber(c[s] || 0) }))),
    ),
    el(
      "div",
      { class: "facts" },
      fact("Elapsed", fmtDuration(run.elapsed_seconds), "elapsed"),
      fact("ETA", run.eta_seconds === null || run.eta_seconds === undefined ? (run.active ? "unknown" : "–") : fmtDuration(run.eta_seconds), "eta"),
      fact("Recent rate", `${fmtNumber(run.recent_copies_per_minute, 1)} / min`),
      fact("Quota", run.quota_copies_per_minute ? `${fmtNumber(run.quota_copies_per_minute, 1)} / min` : "–"),
      fact("Copies / min (run)", fmtNumber(run.copies_per_minute, 1)),
      fact("Failure share", `${fmtPercent(run.failure_percent)} of ${fmtPercent(run.tolerated_failure_percent)} tolerated`),
      fact("Started", fmtTime(run.started_at)),
      fact("Updated", fmtTime(run.updated_at)),
    ),
  );
  const manifests = run.manifests && run.manifests.length ? run.manifests : [{ uri: run.manifest_uri, sha256: run.manifest_sha256, rows: run.rows }];
  clear(
    byId("manifest"),
    el(
      "dl",
      { class: "manifests", id: "manifest-table" },
      manifests.map((m) => [
        el("dt", { text: "URI" }),
        el("dd", {}, mono(m.uri)),
        el("dt", { text: "sha256" }),
        el("dd", { class: "hash" }, mono(m.sha256)),
        el("dt", { text: "Rows" }),
        el("dd", {}, fmtNumber(m.rows)),
      ]),
    ),
  );
  clear(
    byId("in-flight"),
    table(["Data store", "Copies in flight"], (run.in_flight_by_datastore || []).map((d) => [el("td", {}, mono(d.datastore_id)), el("td", { class: "num" }, fmtNumber(d.in_flight))]), {
      id: "in-flight-table",
      empty: "No copy in flight.",
    }),
  );
}

async function renderThroughput(base) {
  const data = await api(`${base}/throughput`, { bucket_seconds: 60 });
  const points = data.points || [];
  const Chart = await loadChartJs();
  const dark = document.documentElement.dataset.theme === "dark";
  const labels = points.map((p) => fmtTime(p.t).slice(11, 16));
  const quota = points.map(() => data.quota_per_bucket ?? null);
  const per = data.bucket_seconds === 60 ? "minute" : `${data.bucket_seconds} s`;
  const datasets = [
    { type: "bar", label: `Completed per ${per}`, data: points.map((p) => p.completed), backgroundColor: dark ? "rgba(96,165,250,0.7)" : "rgba(37,99,235,0.7)" },
    { type: "line", label: `Quota per ${per}`, data: quota, borderColor: dark ? "#f87171" : "#dc2626", borderDash: [6, 4], pointRadius: 0, borderWidth: 2, fill: false, showLine: false },
  ];
  if (chart) {
    chart.data.labels = labels;
    chart.data.datasets[0].data = datasets[0].data;
    chart.data.datasets[1].data = quota;
    chart.update("none");
  } else {
    chart = new Chart(byId("throughput-chart"), {
      plugins: [quotaLine],
      data: { labels, datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: `copies per ${per}` } }, x: { title: { display: true, text: "time" } } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }
  byId("throughput-chart").dataset.points = String(points.length);
  const attempts = Object.entries(data.attempts_per_row || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
  clear(
    byId("attempts"),
    table(["Attempts", "Rows"], attempts.map(([n, rows]) => [el("td", { class: "num" }, n), el("td", { class: "num" }, fmtNumber(rows))]), { id: "attempts-table", empty: "No attempt yet." }),
    el("p", { id: "throttled", text: `Throttled resends: ${data.throttled_resends === null || data.throttled_resends === undefined ? "not recorded" : fmtNumber(data.throttled_resends)}` }),
  );
}

async function renderLatency(base) {
  const data = await api(`${base}/latency`);
  clear(
    byId("latency"),
    el(
      "div",
      { class: "facts" },
      fact("Copies measured", fmtNumber(data.count)),
      fact("p50", fmtSeconds(data.p50), "latency-p50"),
      fact("p90", fmtSeconds(data.p90), "latency-p90"),
      fact("p99", fmtSeconds(data.p99), "latency-p99"),
      fact("max", fmtSeconds(data.max)),
    ),
  );
}

async function renderFailures(base) {
  const data = await api(`${base}/failures`);
  const groups = data.groups || [];
  clear(
    byId("failures"),
    el(
      "p",
      { class: data.over_tolerance ? "error" : "small", id: "failure-share" },
      `Failure share ${fmtPercent(data.failure_percent)} against ${fmtPercent(data.tolerated_failure_percent)} tolerated`,
      data.over_tolerance ? ": over tolerance" : "",
    ),
    table(
      ["Error code", "Count", "First seen", "Last seen", "Sample message", "Sample rows"],
      groups.map((g) => [
        el("td", {}, mono(g.error_code)),
        el("td", { class: "num" }, fmtNumber(g.count)),
        el("td", {}, fmtTime(g.first_seen)),
        el("td", {}, fmtTime(g.last_seen)),
        el("td", { class: "message" }, g.sample_message ?? "–"),
        el("td", {}, (g.sample_rows || []).map((r) => (typeof r === "object" && r !== null ? r.row_number ?? JSON.stringify(r) : r)).join(", ")),
      ]),
      { id: "failures-table", empty: "No failure." },
    ),
  );
  const rows = (await api(`${base}/failed-rows`, { format: "json" })).rows || [];
  const csv = new URL(`${base}/failed-rows`, BASE);
  csv.searchParams.set("format", "csv");
  clear(
    byId("failed-rows"),
    el("p", {}, el("a", { href: csv.href, download: "", id: "failed-csv", text: `Download the ${rows.length} failed rows as CSV` })),
    table(
      ["Row", "Label", "Data store", "Source image set", "Source version", "Status", "Error code", "Message", "Attempts"],
      rows.map((r) => [
        el("td", { class: "num" }, fmtNumber(r.row_number)),
        el("td", {}, r.label ?? "–"),
        el("td", {}, mono(r.datastore_id)),
        el("td", {}, mono(r.source_image_set_id)),
        el("td", {}, mono(r.source_version_id)),
        el("td", {}, statusChip(r.status)),
        el("td", {}, mono(r.error_code)),
        el("td", { class: "message" }, r.message ?? "–"),
        el("td", { class: "num" }, fmtNumber(r.attempts)),
      ]),
      { id: "failed-rows-table", empty: "No failed row." },
    ),
  );
}

export async function initRun() {
  followTheme();
  const which = runFromLocation();
  if (!which) {
    showError("Run", new Error("no run in the page address (…/healthimaging/runs/<dag_id>/<run_id>)"));
    return;
  }
  clear(byId("run-title"), "Run ", mono(which.runId), " of ", mono(which.dagId));
  const ledgerOk = await showLedger();
  if (!ledgerOk) return;
  const base = `api/runs/${encodeURIComponent(which.dagId)}/${encodeURIComponent(which.runId)}`;
  autoRefresh(async () => {
    clearMessages();
    let run;
    try {
      run = await api(base);
    } catch (err) {
      // A run that has not written its first ledger row yet is a 404: keep asking, it may appear.
      showError(err.status === 404 ? "This run is not in the ledger (yet)" : "Run", err);
      return err.status === 404;
    }
    renderRun(run);
    await Promise.all([
      renderThroughput(base).catch((err) => showError("Throughput", err)),
      renderLatency(base).catch((err) => showError("Latency", err)),
      renderFailures(base).catch((err) => showError("Failures", err)),
    ]);
    return Boolean(run.active);
  });
}
