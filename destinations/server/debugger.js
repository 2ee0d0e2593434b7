// The live debugger's page: polls the JSON API once a second and draws what it answers. Everything shown is
// put in the page as text (textContent), never as markup, since messages come from anywhere.
"use strict";

const state = { chosen: null, last: "", destinationsLoaded: false };
const $ = (id) => document.getElementById(id);

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function badge(name, status, warnings) {
  const span = element("span", { className: `badge ${status}`, "data-destination": name, "data-status": status },
    `${name}: ${status}`);
  if (!warnings) return span;
  const wrap = element("span", {}, span, element("span", { className: "badge warn" }, `${warnings} warning${warnings > 1 ? "s" : ""}`));
  return wrap;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) {
    $("login").hidden = false;
    $("main").hidden = true;
    $("login-failed").hidden = !location.search.includes("login=failed");
    return null;
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function loadAccess() {
  const access = await api("/debugger/api/access");
  if (!access) return false;
  $("access").textContent = access.open ? "open on loopback: no token is set" : "guarded by its token";
  if (!state.destinationsLoaded) {
    for (const name of access.destinations) $("destination").append(element("option", { value: name }, name));
    state.destinationsLoaded = true;
  }
  return true;
}

function query() {
  const params = new URLSearchParams({ limit: "200" });
  if ($("search").value.trim()) params.set("q", $("search").value.trim());
  if ($("destination").value) params.set("destination", $("destination").value);
  if ($("status").value) params.set("status", $("status").value);
  return `/debugger/api/messages?${params}`;
}

async function refresh() {
  const answer = await api(query());
  if (!answer) return;
  const text = JSON.stringify(answer.messages);
  if (text === state.last) return;
  state.last = text;
  const rows = answer.messages.map((m) => {
    const badges = element("td", { className: "badges" },
      ...Object.entries(m.destinations).map(([name, b]) => badge(name, b.status, b.warnings)));
    const row = element("tr", { className: "message", "data-message-id": m.messageId },
      element("td", {}, when(m.receivedAt || m.mappedAt)), element("td", {}, m.type || ""),
      element("td", {}, m.event || ""), element("td", {}, m.userId || m.anonymousId || ""),
      element("td", {}, m.wayIn || ""), badges);
    if (m.messageId === state.chosen) row.classList.add("chosen");
    row.addEventListener("click", () => choose(m.messageId));
    return row;
  });
  $("rows").replaceChildren(...rows);
  $("nothing").hidden = rows.length > 0;
  if (state.chosen) await showDetail(state.chosen);
}

async function choose(messageId) {
  state.chosen = messageId;
  $("detail").replaceChildren(element("p", { className: "empty" }, "Loading…"));
  for (const row of document.querySelectorAll("tr.message")) {
    row.classList.toggle("chosen", row.dataset.messageId === messageId);
  }
  await showDetail(messageId);
}

function attemptsTable(attempts) {
  if (!attempts.length) return element("p", { className: "empty" }, "no attempt yet");
  return element("table", {},
    element("thead", {}, element("tr", {}, element("th", {}, "time"), element("th", {}, "status"),
      element("th", {}, "vendor's answer"), element("th", {}, "next retry"))),
    element("tbody", {}, ...attempts.map((a) => element("tr", { className: "attempt" },
      element("td", {}, when(a.at)), element("td", {}, a.status), element("td", {}, a.answer || ""),
      element("td", {}, a.nextRetry ? when(a.nextRetry) : "")))));
}

async function showDetail(messageId) {
  let found;
  try {
    found = await api(`/debugger/api/message?${new URLSearchParams({ messageId })}`);
  } catch (error) {
    if (state.chosen === messageId) {
      $("detail").replaceChildren(element("p", { className: "empty" }, `This message cannot be shown (${error.message}).`));
    }
    return;
  }
  if (!found || state.chosen !== messageId) return;
  const parts = [element("h2", {}, `${found.type || ""} ${found.event || ""} · ${found.messageId}`),
    element("p", {}, `way in: ${found.wayIn || "?"} · received ${when(found.receivedAt)} · mapped ${when(found.mappedAt)}`)];
  for (const [name, d] of Object.entries(found.destinations)) {
    const section = element("section", { className: "destination", "data-destination": name },
      element("h3", {}, badge(name, d.status, d.warnings.length)));
    if (d.outcome === "invalid") {
      section.append(element("p", { className: "reason" }, `invalid at ${d.path || "?"}: `, element("code", {}, d.reason || "")));
    } else if (d.outcome !== "requests") {
      section.append(element("p", { className: "reason" }, `${d.outcome}: ${d.reason || ""}`));
    }
    for (const warning of d.warnings) section.append(element("p", { className: "badge warn" }, warning));
    for (const request of d.requests) {
      const shown = { method: request.method, url: request.url, params: request.params, headers: request.headers, json: request.json };
      section.append(element("p", {}, `request ${request.index}: ${request.state}`),
        element("pre", {}, JSON.stringify(shown, null, 2)), attemptsTable(request.attempts));
    }
    if (d.status === "dead" && d.requests.length) {
      const button = element("button", { type: "button", className: "replay", "data-destination": name }, `Replay to ${name}`);
      button.addEventListener("click", async () => {
        button.disabled = true;
        const params = new URLSearchParams({ messageId, destination: name });
        try {
          const answer = await api(`/debugger/api/replay?${params}`, { method: "POST", headers: { "X-Debugger": "replay" } });
          button.textContent = answer ? `${answer.replayed} request(s) back to pending` : "not replayed";
        } catch (error) {
          button.textContent = `not replayed (${error.message})`;
          button.disabled = false;
        }
        state.last = "";
        await tick();
      });
      section.append(button);
    }
    parts.push(section);
  }
  parts.push(element("h3", {}, "message as received"), element("pre", { className: "received" }, JSON.stringify(found.message, null, 2)));
  $("detail").replaceChildren(...parts);
}

async function tick() {
  try {
    await refresh();
  } catch (error) {
    $("access").textContent = `the server did not answer (${error.message}); trying again`;
  }
}

async function start() {
  if (!(await loadAccess())) return;
  for (const id of ["search", "destination", "status"]) {
    $(id).addEventListener("input", () => { state.last = ""; tick(); });
  }
  await tick();
  setInterval(tick, 1000);
}

start();
