// The dashboard's pages and their refresh: #/ (jobs, ?status= filter) and #/jobs/<id> (one job, live).
import { ApiError, allPages, download, getJSON, getKey, setKey, streamEvents } from "./api.js";
import { drawChart } from "./chart.js";
import * as v from "./views.js";

const { el } = v;
const LIST_REFRESH_MS = 5000; // the jobs list, while auto-refresh is on
const JOB_REFRESH_MS = 3000; // a job that is not finished: its record and new metric points
const PAGE_SIZE = 25;
const main = document.getElementById("main");
const banner = document.getElementById("error");
const keyPanel = document.getElementById("key-panel");
const keyMessage = document.getElementById("key-message");
let current = null; // the page shown: {stop()}

function showError(error) {
  if (error instanceof ApiError && error.status === 401) {
    keyMessage.textContent = `This API needs a key: ${error.message}`;
    keyPanel.hidden = false;
    document.getElementById("key-input").focus();
  }
  const text =
    error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : `Error: ${error.message}`;
  banner.textContent = error.requestId ? `${text} (request ${error.requestId})` : text;
  banner.hidden = false;
}

// Run one refresh; an error is shown (an aborted request, from leaving the page, is not).
async function guarded(fn) {
  try {
    await fn();
    banner.hidden = true;
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  }
}

function every(ms, fn) {
  const timer = setInterval(() => document.hidden || fn(), ms);
  return () => clearInterval(timer);
}

function jobsPage(query) {
  const status = v.STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const after = query.get("after") || "";
  const abort = new AbortController();
  const select = el(
    "select",
    { id: "status-filter" },
    el("option", { value: "" }, "all statuses"),
    v.STATUSES.map((s) => el("option", { value: s }, s)),
  );
  select.value = status;
  select.addEventListener("change", () => (window.location.hash = select.value ? `#/?status=${select.value}` : "#/"));
  const auto = el("input", { type: "checkbox", id: "auto-refresh", checked: true });
  const holder = el("div", { id: "jobs-holder" });
  const pager = el("p", { class: "pager" });
  main.replaceChildren(
    el("h1", {}, "Jobs"),
    el(
      "div",
      { class: "controls" },
      el("label", {}, "Status ", select),
      el("label", {}, auto, ` auto-refresh (${LIST_REFRESH_MS / 1000} s)`),
      el("button", { type: "button", on: { click: () => guarded(load) } }, "Refresh"),
    ),
    holder,
    pager,
  );
  async function load() {
    const page = await getJSON("/v1/jobs", { status, after, limit: PAGE_SIZE }, abort.signal);
    holder.replaceChildren(v.jobsTable(page.data));
    const base = status ? `#/?status=${status}` : "#/";
    pager.replaceChildren(
      after ? el("a", { href: base }, "« newest") : "",
      page.has_more
        ? el("a", { href: `${base}${status ? "&" : "?"}after=${encodeURIComponent(page.last_id)}` }, "older »")
        : "",
    );
  }
  guarded(load);
  const stop = every(LIST_REFRESH_MS, () => auto.checked && guarded(load));
  return { stop: () => (stop(), abort.abort()) };
}

function jobPage(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const abort = new AbortController();
  const metrics = [];
  const seen = new Set();
  let metricsCursor = null;
  let eventsCursor = null;
  let streaming = false;
  let job = null;
  let stopPolling = () => {};
  const canvas = el("canvas", { id: "chart", role: "img", "aria-label": "train and eval curves" });
  const chartSelect = el("select", { id: "chart-metric" }, el("option", { value: "loss" }, "loss"));
  const chartNote = el("p", { id: "chart-summary", class: "muted" });
  const sections = {
    summary: el("div", { id: "summary" }),
    results: el("div", { id: "results-section" }),
    confusion: el("div", { id: "confusion-section" }),
    artifacts: el("div", { id: "artifacts-section" }),
  };
  const events = el("tbody", {});
  const liveNote = el("span", { id: "live", class: "muted" });
  main.replaceChildren(
    el("p", {}, el("a", { href: "#/" }, "« all jobs")),
    el("h1", {}, "Job ", el("span", { class: "mono", id: "job-id" }, id)),
    sections.summary,
    el(
      "div",
      { class: "grid" },
      el("section", { class: "card" }, el("h2", {}, "Curves ", chartSelect), canvas, chartNote),
      el("section", { class: "card" }, el("h2", {}, "Results: before / after"), sections.results),
    ),
    el("section", { class: "card" }, el("h2", {}, "Confusion matrix"), sections.confusion),
    el("section", { class: "card" }, el("h2", {}, "Artifacts"), sections.artifacts),
    el(
      "section",
      { class: "card" },
      el("h2", {}, "Events ", liveNote),
      el(
        "table",
        { id: "events" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ["Time", "Level", "Type", "Message"].map((h) => el("th", {}, h)),
          ),
        ),
        events,
      ),
    ),
  );

  function chart() {
    const metric = chartSelect.value;
    const of = (split, name) =>
      metrics
        .filter((m) => m.split === split && typeof m.values[name] === "number")
        .map((m) => [m.step, m.values[name]]);
    const series = [{ name: `eval ${metric}`, color: "#d9730d", points: of("eval", metric), dots: true }];
    if (metric === "loss") series.unshift({ name: "train loss", color: "#2f6fde", points: of("train", "loss") });
    drawChart(canvas, series, "step");
    chartNote.textContent = series
      .filter((s) => s.points.length)
      .map((s) => `${s.name} ${v.num(s.points.at(-1)[1])} at step ${s.points.at(-1)[0]} (${s.points.length} points)`)
      .join(" · ");
    const names = new Set(metrics.filter((m) => m.split === "eval").flatMap((m) => Object.keys(m.values)));
    for (const name of [...names].filter((n) => !n.includes("/")).sort()) {
      if (![...chartSelect.options].some((o) => o.value === name))
        chartSelect.append(el("option", { value: name }, name));
    }
  }
  chartSelect.addEventListener("change", chart);
  window.addEventListener("resize", chart, { signal: abort.signal });

  async function refreshJob() {
    job = await getJSON(path, {}, abort.signal);
    sections.summary.replaceChildren(v.summary(job));
    const results = job.results || {};
    sections.results.replaceChildren(v.resultsTable(results));
    sections.confusion.replaceChildren(
      results.confusion_matrix
        ? v.confusionTables(results.confusion_matrix)
        : el("p", { class: "muted" }, "None (classification jobs report one when they finish)."),
    );
    sections.artifacts.replaceChildren(
      v.artifactsTable(job.artifacts || [], (name) => guarded(() => download(id, name))),
    );
  }
  async function refreshMetrics() {
    const page = await allPages(`${path}/metrics`, metricsCursor, abort.signal);
    metricsCursor = page.lastId;
    const known = new Set(metrics.map((m) => m.id));
    metrics.push(...page.data.filter((m) => !known.has(m.id)));
    chart();
  }
  function addEvent(event) {
    if (seen.has(event.id)) return;
    seen.add(event.id);
    eventsCursor = event.id;
    events.prepend(v.eventRow(event)); // newest first
  }
  async function pollEvents() {
    const page = await allPages(`${path}/events`, eventsCursor, abort.signal);
    page.data.forEach(addEvent);
  }
  async function refresh() {
    await refreshJob();
    await refreshMetrics();
    if (!streaming) await pollEvents();
    if (v.TERMINAL.has(job.status)) stopPolling(); // everything is final now
  }
  // One refresh at a time (the cursors move): a request meanwhile runs once more after it.
  let running = null;
  let again = false;
  function schedule() {
    if (running) {
      again = true;
      return running;
    }
    running = guarded(refresh).finally(() => {
      running = null;
      if (again) {
        again = false;
        schedule();
      }
    });
    return running;
  }
  // Live events over SSE (fetch with the key); on failure (e.g. too many streams) the poll reads them instead.
  async function live() {
    streaming = true;
    liveNote.textContent = "(live)";
    try {
      await streamEvents(
        id,
        eventsCursor,
        (event) => {
          addEvent(event);
          if (event.type === "metrics" || event.type === "status") schedule();
        },
        abort.signal,
      );
      liveNote.textContent = "";
    } catch (error) {
      if (error.name === "AbortError") return;
      liveNote.textContent = "(polled)";
    }
    streaming = false;
    schedule();
  }
  schedule().then(() => {
    if (job === null) return; // not found, or no key yet: the banner says why
    if (!v.TERMINAL.has(job.status)) stopPolling = every(JOB_REFRESH_MS, schedule);
    live();
  });
  return { stop: () => (stopPolling(), abort.abort()) };
}

function route() {
  current?.stop();
  const [path, query] = (window.location.hash.slice(1) || "/").split("?");
  const match = path.match(/^\/jobs\/([^/]+)$/);
  current = match ? jobPage(decodeURIComponent(match[1])) : jobsPage(new URLSearchParams(query || ""));
}

function showKeyState() {
  document.getElementById("key-state").textContent = getKey() ? "key set" : "no key";
}

document.getElementById("key-button").addEventListener("click", () => {
  keyPanel.hidden = !keyPanel.hidden;
  keyMessage.textContent = "";
});
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  setKey(input.value.trim());
  input.value = "";
  keyPanel.hidden = true;
  showKeyState();
  route();
});
document.getElementById("key-forget").addEventListener("click", () => {
  setKey("");
  showKeyState();
  route();
});
window.addEventListener("hashchange", route);
showKeyState();
route();
