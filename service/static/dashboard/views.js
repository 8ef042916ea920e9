// What the pages are made of, built with DOM calls only: every value from the API lands as text (textContent,
// attribute values), never as HTML.

export const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// el("td", {class: "num", dataset: {metric: "f1"}}, "0.93", otherNode): strings become text nodes.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function num(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return v === undefined || v === null ? "–" : String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e6 ? String(Number(v.toPrecision(4))) : v.toExponential(3);
}

export function when(seconds) {
  if (!seconds) return "–";
  const d = new Date(seconds * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const s = Math.round(seconds);
  return s >= 3600
    ? `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
    : s >= 60
      ? `${Math.floor(s / 60)}m ${s % 60}s`
      : `${s}s`;
}

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) [n, i] = [n / 1024, i + 1];
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

// "12/40 (30%)" with a bar; a job without a step count yet shows its step alone.
export function progressCell(progress) {
  const { step = 0, total_steps: total } = progress || {};
  const pct = total ? Math.min(100, Math.round((100 * step) / total)) : null;
  return el(
    "div",
    { class: "progress" },
    el("progress", { max: 100, value: pct ?? 0 }),
    el("span", { class: "progress-text" }, total ? `${step}/${total} (${pct}%)` : `${step}`),
  );
}

export function table(headers, rows, attrs) {
  return el(
    "table",
    attrs,
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        headers.map((h) => el("th", {}, h)),
      ),
    ),
    el("tbody", {}, rows),
  );
}

export function jobsTable(jobs) {
  const rows = jobs.map((job) =>
    el(
      "tr",
      { dataset: { job: job.id } },
      el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, job.task),
      el("td", { title: job.model }, job.model.split("/").pop()),
      el("td", {}, job.method?.type ?? "–"),
      el("td", {}, progressCell(job.progress)),
      el("td", { class: "num" }, num(job.last_metrics?.train_loss)),
      el("td", { class: "num" }, num(job.last_metrics?.eval_loss)),
      el("td", {}, when(job.created_at)),
    ),
  );
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No jobs.")));
  return table(["Job", "Status", "Task", "Model", "Method", "Progress", "Train loss", "Eval loss", "Created"], rows, {
    id: "jobs",
  });
}

// The job's facts as a definition list; each value's <dd> carries data-field for tests and scripts.
export function summary(job) {
  const p = job.progress || {};
  const facts = [
    ["status", "Status", statusBadge(job.status)],
    ["task", "Task", job.task],
    ["model", "Model", job.model],
    ["method", "Method", job.method?.type ?? "–"],
    ["progress", "Progress", progressCell(p)],
    ["epoch", "Epoch", num(p.epoch)],
    ["tokens", "Tokens seen", num(p.tokens_seen)],
    ["elapsed", "Elapsed", duration(p.elapsed_seconds)],
    ["eta", "ETA", TERMINAL.has(job.status) ? "–" : duration(p.eta_seconds)],
    ["attempt", "Attempt", num(job.attempt)],
    ["created", "Created", when(job.created_at)],
    ["finished", "Finished", when(job.finished_at)],
  ];
  if (job.error) facts.push(["error", "Error", `${job.error.code}: ${job.error.message}`]);
  return el(
    "dl",
    { class: "facts" },
    facts.map(([field, name, value]) => el("div", {}, el("dt", {}, name), el("dd", { dataset: { field } }, value))),
  );
}

// Before/after: every metric of the baseline and final evaluations, with the change.
export function resultsTable(results) {
  const before = results.baseline || {};
  const after = results.final || {};
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((n) => !n.includes("/"));
  const rows = names.map((name) => {
    const [b, a] = [before[name], after[name]];
    const change = typeof a === "number" && typeof b === "number" ? a - b : undefined;
    return el(
      "tr",
      { dataset: { metric: name } },
      el("th", {}, name),
      el("td", { class: "num before" }, num(b)),
      el("td", { class: "num after" }, num(a)),
      el("td", { class: "num change" }, change === undefined ? "–" : (change > 0 ? "+" : "") + num(change)),
    );
  });
  const run = [
    ["steps", "Steps", num(results.steps)],
    ["train_loss_first", "First train loss", num(results.train_loss_first)],
    ["train_loss_last", "Last train loss", num(results.train_loss_last)],
    ["train_seconds", "Training time", duration(results.train_seconds)],
    ["tokens_seen", "Tokens seen", num(results.tokens_seen)],
  ].filter(([field]) => results[field] !== undefined);
  const notes = (results.diagnostics || []).map((d) => el("li", {}, `${d.flag ?? "note"}: ${d.message ?? ""}`));
  return el(
    "div",
    { class: "results" },
    rows.length
      ? table(["Metric", "Before", "After", "Change"], rows, { id: "results" })
      : el("p", { class: "muted" }, "No evaluation results."),
    el(
      "dl",
      { class: "facts compact" },
      run.map(([field, name, value]) => el("div", {}, el("dt", {}, name), el("dd", { dataset: { field } }, value))),
    ),
    notes.length ? el("ul", { class: "notes" }, notes) : null,
  );
}

// Rows: the true label; columns: the predicted one.
export function confusionTables(cm) {
  const labels = cm.labels || [];
  return el(
    "div",
    { class: "confusion" },
    ["baseline", "final"]
      .filter((stage) => cm[stage])
      .map((stage) =>
        el(
          "figure",
          { dataset: { stage } },
          el("figcaption", {}, stage === "baseline" ? "Before training" : "After training"),
          table(
            ["true ↓ / predicted →", ...labels],
            cm[stage].map((row, i) =>
              el(
                "tr",
                {},
                el("th", {}, labels[i] ?? String(i)),
                row.map((n, j) => el("td", { class: i === j ? "num diag" : "num" }, num(n))),
              ),
            ),
            { class: "matrix" },
          ),
        ),
      ),
  );
}

export function artifactsTable(artifacts, onDownload) {
  const rows = artifacts.map((a) =>
    el(
      "tr",
      { dataset: { artifact: a.name } },
      el("td", {}, a.name),
      el("td", { class: "num" }, bytes(a.bytes)),
      el("td", { class: "mono", title: a.sha256 }, a.sha256.slice(0, 12)),
      el("td", {}, el("button", { type: "button", on: { click: () => onDownload(a.name) } }, "Download")),
    ),
  );
  return rows.length
    ? table(["Name", "Size", "sha256", ""], rows, { id: "artifacts" })
    : el("p", { class: "muted" }, "No artifacts yet (they are listed once the job succeeds).");
}

export function eventRow(event) {
  return el(
    "tr",
    { class: `level-${event.level}`, dataset: { event: event.id } },
    el("td", { class: "mono" }, when(event.created_at)),
    el("td", {}, event.level),
    el("td", {}, event.type),
    el("td", {}, event.message),
  );
}
