// The one module that talks to the API: the key, JSON reads, artifact downloads and the live event stream.
// Every call goes to this origin's /v1 with `Authorization: Bearer <key>` when a key is set.

const KEY_NAME = "ftjobs.apiKey";

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || String(status);
    this.param = error.param || null;
    this.requestId = requestId || null;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

function headers(accept) {
  const h = { Accept: accept };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function apiUrl(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  return url;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not our error body (a proxy's page): the status says enough
  }
  return new ApiError(response.status, body, response.headers.get("x-request-id"));
}

export async function getJSON(path, params, signal) {
  const response = await fetch(apiUrl(path, params), {
    headers: headers("application/json"),
    cache: "no-store",
    signal,
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Every page of a cursor-paginated list after `after`: {data, lastId}.
export async function allPages(path, after, signal) {
  const data = [];
  let cursor = after || null;
  for (;;) {
    const page = await getJSON(path, { limit: 1000, after: cursor }, signal);
    data.push(...page.data);
    if (page.last_id) cursor = page.last_id;
    if (!page.has_more) return { data, lastId: cursor };
  }
}

// Download an artifact: fetched with the key (a plain link could not send it), saved through a blob: URL.
export async function download(jobId, name) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`;
  const response = await fetch(apiUrl(path), { headers: headers("*/*"), cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name.split("/").pop() || "artifact";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

// The job's events as Server-Sent Events, read from fetch() (EventSource cannot send the key): the backlog after
// `after`, then each event as it is written; resolves when the server ends the stream (the job is terminal).
export async function streamEvents(jobId, after, onEvent, signal) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}/events`;
  const response = await fetch(apiUrl(path, { after }), { headers: headers("text/event-stream"), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onEvent(JSON.parse(data)); // keep-alive comments (": ...") carry no data
    }
  }
}
