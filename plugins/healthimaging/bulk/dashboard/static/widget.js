// The HealthImaging copies widget on Airflow's home page (react_apps, destination "dashboard").
//
// Airflow's UI loads this file with a dynamic import() of the plugin's bundle_url, then renders
// globalThis[<react app name>] (else globalThis.AirflowPlugin) as a React component. No build step: the
// host page exposes globalThis.React, so this is React.createElement, no JSX. The figures come from
// /healthimaging/api/summary (behind Airflow's login: the browser's _token cookie); they are rendered as
// React text children, never as HTML.

const React = globalThis.React;
const h = React.createElement;

const NAME = "HealthImagingCopiesWidget";
const REFRESH_MS = 15000;
/** …/healthimaging/ (this module is …/healthimaging/static/widget.js). */
const BASE = new URL("../", import.meta.url);
const SUMMARY_URL = new URL("api/summary", BASE).href;
/** The nav page "HealthImaging copies" in Airflow's UI (its external view's url_route "healthimaging-copies"). */
const NAV_ROUTE = "plugin/healthimaging-copies";

const styles = {
  card: {
    border: "1px solid rgba(128, 128, 128, 0.35)",
    borderRadius: "8px",
    padding: "12px 16px",
    margin: "8px 0",
    color: "inherit",
    font: "inherit",
  },
  header: { display: "flex", justifyContent: "space-between", alignItems: "baseline", gap: "12px", flexWrap: "wrap" },
  title: { fontSize: "16px", fontWeight: 600, margin: 0 },
  link: { color: "inherit", textDecoration: "underline", fontSize: "13px" },
  grid: { display: "flex", flexWrap: "wrap", gap: "24px", marginTop: "10px" },
  stat: { minWidth: "110px" },
  value: { fontSize: "24px", fontWeight: 600, fontVariantNumeric: "tabular-nums", lineHeight: 1.2 },
  label: { fontSize: "12px", opacity: 0.75 },
  error: { color: "#dc2626", fontSize: "13px", marginTop: "8px" },
  muted: { fontSize: "12px", opacity: 0.7, marginTop: "8px" },
};

async function fetchSummary() {
  const response = await fetch(SUMMARY_URL, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : response.statusText;
    throw new Error(`HTTP ${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  if (!body || typeof body !== "object") throw new Error("the summary is not JSON");
  return body;
}

function fmt(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString();
}

function Stat(props) {
  return h(
    "div",
    { style: styles.stat, "data-stat": props.name },
    h("div", { style: styles.value, "data-value": props.name }, fmt(props.value)),
    h("div", { style: styles.label }, props.label),
  );
}

function HealthImagingCopiesWidget() {
  const [summary, setSummary] = React.useState(null);
  const [error, setError] = React.useState(null);

  React.useEffect(() => {
    let timer = null;
    let stopped = false;
    const load = async () => {
      let active = false;
      try {
        const data = await fetchSummary();
        if (stopped) return;
        setSummary(data);
        setError(null);
        active = Number(data.runs_in_progress) > 0 || Number(data.in_flight) > 0;
      } catch (err) {
        if (stopped) return;
        setError(err && err.message ? err.message : String(err));
      }
      // Refresh every 15 s while a run is in progress; stop when none is.
      if (active && !stopped) timer = setTimeout(load, REFRESH_MS);
    };
    load();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
    };
  }, []);

  const navHref = new URL(NAV_ROUTE, document.baseURI).href;
  return h(
    "section",
    { style: styles.card, "data-testid": "healthimaging-copies-widget", "aria-label": "HealthImaging copies" },
    h(
      "div",
      { style: styles.header },
      h("h3", { style: styles.title }, "HealthImaging copies"),
      h("a", { href: navHref, style: styles.link }, "Open the dashboard"),
    ),
    summary
      ? h(
          "div",
          { style: styles.grid },
          h(Stat, { name: "in_flight", label: "copies in flight", value: summary.in_flight }),
          h(Stat, { name: "succeeded_today", label: "succeeded today", value: summary.succeeded_today }),
          h(Stat, { name: "failed_today", label: "failed today", value: summary.failed_today }),
          h(Stat, { name: "runs_in_progress", label: "runs in progress", value: summary.runs_in_progress }),
        )
      : error
        ? null
        : h("div", { style: styles.muted }, "Loading…"),
    error ? h("div", { style: styles.error, role: "alert" }, `The copies summary is unavailable: ${error}`) : null,
  );
}

globalThis[NAME] = HealthImagingCopiesWidget;
globalThis.AirflowPlugin = HealthImagingCopiesWidget;

export default HealthImagingCopiesWidget;
