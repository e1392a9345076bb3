// agent-recorder web view: plain JS, no build step, everything from this server.
"use strict";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const liveBadge = document.getElementById("live");
let current = null; // the page being shown: { stop() }

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") el.style.cssText = value; // CSSOM: allowed by the page's CSP
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function fmtTime(value) {
  if (value === null || value === undefined || value === "") return "";
  const date = new Date(value);
  return date.toLocaleString(undefined, { hour12: false });
}

function fmtNum(value) {
  return Number(value || 0).toLocaleString();
}

function fmtSpan(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const minutes = Math.round(ms / 60000);
  return minutes < 120 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function shortLoop(id) {
  const parts = id.split(".");
  return parts.length >= 3 ? parts.slice(-2).join(".") : id;
}

function enumName(value, prefix) {
  return String(value || "").replace(prefix, "").toLowerCase();
}

// replaceChildren would print null and undefined as text; conditional parts are skipped.
function fill(el, items) {
  el.replaceChildren(...items.filter((item) => item !== null && item !== undefined && item !== false));
}

function json(value) {
  return h("pre", {}, JSON.stringify(value, null, 2));
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function setLive(on) { liveBadge.hidden = !on; }

function showError(where, error) {
  where.replaceChildren(h("p", { class: "error" }, String(error.message || error)));
}

// ---------------------------------------------------------------- routing

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { path: path.split("/").filter(Boolean).map(decodeURIComponent),
           params: new URLSearchParams(query || "") };
}

function route() {
  if (current) current.stop();
  setLive(false);
  const { path, params } = parseHash();
  if (path[0] === "session" && path[1]) current = sessionPage(path[1], params);
  else current = sessionsPage(params);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);

// ---------------------------------------------------------------- sessions list

function sessionsPage(params) {
  crumbs.replaceChildren("sessions");
  const tokens = params.get("tokens") ? params.get("tokens").split(",") : [];
  const filters = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply([]); } },
    h("label", {}, "agent", h("input", { name: "agent", value: params.get("agent") || "", placeholder: "any" })),
    h("label", {}, "scope", h("select", { name: "scope" },
      ["", "ephemeral", "persistent"].map((s) => h("option", { value: s, selected: params.get("scope") === s }, s || "any")))),
    h("label", {}, "active since", h("input", { name: "since", type: "datetime-local", step: "1",
      value: params.get("since") || "" })),
    h("label", {}, "per page", h("select", { name: "page_size" },
      ["25", "50", "100", "200"].map((n) => h("option", { value: n, selected: (params.get("page_size") || "50") === n }, n)))),
    h("button", { type: "submit" }, "Apply"));
  const table = h("div", { id: "sessions" }, h("p", { class: "muted" }, "Loading…"));
  const pager = h("div", { class: "pager" });
  view.replaceChildren(filters, table, pager);

  function apply(newTokens) {
    const form = new FormData(filters);
    const next = new URLSearchParams();
    for (const key of ["agent", "scope", "since", "page_size"]) if (form.get(key)) next.set(key, form.get(key));
    if (newTokens.length) next.set("tokens", newTokens.join(","));
    location.hash = `#/?${next}`;
  }

  async function load() {
    const query = new URLSearchParams();
    for (const key of ["agent", "scope", "page_size"]) if (params.get(key)) query.set(key, params.get(key));
    if (params.get("since")) query.set("since", new Date(params.get("since")).toISOString());
    if (tokens.length) query.set("page_token", tokens[tokens.length - 1]);
    try {
      const page = await getJson(`/api/sessions?${query}`);
      table.replaceChildren(sessionsTable(page.sessions || []));
      pager.replaceChildren(
        h("button", { disabled: !tokens.length, onclick: () => apply(tokens.slice(0, -1)) }, "← newer"),
        h("button", { disabled: !page.nextPageToken, onclick: () => apply([...tokens, page.nextPageToken]) }, "older →"),
        h("span", { class: "muted" }, `page ${tokens.length + 1}`));
      view.dataset.ready = "sessions";
    } catch (error) { showError(table, error); }
  }

  load();
  const source = new EventSource(`/api/live${params.get("agent") ? `?agent=${encodeURIComponent(params.get("agent"))}` : ""}`);
  const reload = debounce(load, 300);
  source.onmessage = reload;
  source.onopen = () => setLive(true);
  source.onerror = () => setLive(false);
  return { stop: () => { source.close(); delete view.dataset.ready; } };
}

function statusCounts(loops) {
  const names = ["pending", "running", "completed", "rejected", "aborted"];
  return h("span", { class: "counts" }, names.filter((n) => loops && loops[n]).map((n) =>
    h("span", { class: `s-${n}`, title: n }, loops[n])));
}

function usageTotal(usage) {
  if (!usage) return 0;
  const total = Number(usage.totalTokens || 0);
  return total || Number(usage.input || 0) + Number(usage.output || 0) +
    Number(usage.cacheRead || 0) + Number(usage.cacheWrite || 0);
}

// What something cost, exactly as the server computed it (a decimal string, never
// a float); "unpriced" when no call in it had a price, never $0.
function fmtCost(cost) {
  if (!cost) return "";
  const unpriced = Number(cost.unpricedCalls || 0);
  if (unpriced && !Number(cost.pricedCalls || 0)) return "unpriced";
  let amount = cost.amount || "0";
  const [whole, frac = ""] = amount.split(".");
  if (frac.length < 2) amount = `${whole}.${frac.padEnd(2, "0")}`;
  const money = (cost.currency || "USD") === "USD" ? `$${amount}` : `${amount} ${cost.currency}`;
  return unpriced ? `${money} + ${unpriced} unpriced` : money;
}

function costTitle(cost) {
  if (!cost) return "";
  const parts = [cost.source ? `prices: ${cost.source}` : ""];
  if (cost.unpricedReason) parts.push(`unpriced: ${cost.unpricedReason}`);
  return parts.filter(Boolean).join("\n");
}

function costBadge(cost, attrs = {}) {
  if (!cost) return null;
  return h("span", { class: cost.priced ? "cost" : "cost unpriced", title: costTitle(cost), ...attrs }, fmtCost(cost));
}

function sameCost(a, b) {
  return (a?.amount || "") === (b?.amount || "") && Number(a?.unpricedCalls || 0) === Number(b?.unpricedCalls || 0);
}

function sessionsTable(sessions) {
  if (!sessions.length) return h("p", { class: "muted" }, "No sessions match.");
  const rows = sessions.map((s) => h("tr", { class: "session-row", dataset: { session: s.sessionId } },
    h("td", {}, h("a", { href: `#/session/${encodeURIComponent(s.sessionId)}`, class: "mono" }, s.sessionId)),
    h("td", {}, h("a", { href: `#/?agent=${encodeURIComponent(s.agentId)}`, title: "only this agent" }, s.agentId)),
    h("td", {}, enumName(s.scope || "SESSION_SCOPE_EPHEMERAL", "SESSION_SCOPE_")),
    h("td", {}, fmtTime(s.createdAt)),
    h("td", {}, fmtTime(s.lastActiveAt)),
    h("td", {}, s.finalizedAt ? fmtTime(s.finalizedAt) : h("span", { class: "badge" }, "open")),
    h("td", {}, statusCounts(s.loops)),
    h("td", { class: "num" }, fmtNum(usageTotal(s.usage))),
    h("td", { class: "num" }, costBadge(s.cost || {}, { dataset: { role: "session-cost" } }),
      s.treeCost && !sameCost(s.cost, s.treeCost)
        ? h("div", { class: "muted" }, "with sub-agents ", costBadge(s.treeCost, { dataset: { role: "tree-cost" } })) : null),
    h("td", {}, s.parentSpawnRef ? h("a", { href: `#/session/${encodeURIComponent(s.parentSpawnRef.parentSessionId)}` },
      `↑ ${s.parentSpawnRef.toolName || "parent"}`) : "")));
  return h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["session", "agent", "scope", "created", "last active", "finalized",
      "loops", "tokens", "cost", "spawned by"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

// ---------------------------------------------------------------- session page

function sessionPage(sessionId, params) {
  const state = {
    sessionId, outline: null, byId: new Map(), selected: null, expanded: new Set(), zoom: 1, changed: new Set(),
    loopCache: new Map(), eventsView: null, source: null, stopped: false,
  };
  crumbs.replaceChildren(h("a", { href: "#/" }, "sessions"), " / ", h("span", { class: "mono" }, sessionId));
  const head = h("div", { class: "head" });
  const tree = h("div", { class: "pane tree", id: "tree" }, h("p", { class: "muted" }, "Loading…"));
  const timeline = h("div", { class: "pane timeline", id: "timeline" });
  const details = h("div", { class: "pane details", id: "details" },
    h("p", { class: "muted" }, "Click a loop, a turn or a tool call to see its details."));
  view.replaceChildren(head, h("div", { class: "panes" }, tree, timeline, details));
  Object.assign(state, { head, tree, timeline, details });

  const refresh = debounce(() => load(false), 300);

  async function load(first) {
    const changed = new Set(state.changed);
    state.changed.clear();
    try {
      const outline = await getJson(`/api/sessions/${encodeURIComponent(sessionId)}`);
      if (state.stopped) return;
      const before = state.selected && state.byId.get(state.selected.loop);
      setOutline(state, outline);
      if (first) {
        const many = outline.loops.length > 40;
        for (const loop of outline.loops) if (!many) state.expanded.add(loop.id);
        if (params.get("loop") && state.byId.has(params.get("loop"))) state.selected = { kind: "loop", loop: params.get("loop") };
        if (outline.cursor !== null && outline.cursor !== undefined) follow(outline.cursor);
      }
      render(state);
      if (first && state.selected) showDetails(state);
      else if (state.selected && changed.has(state.selected.loop)) {
        // A turn or tool shown is redrawn; a loop's details only when its status
        // moved, so its live event list is not reset under the reader.
        const after = state.byId.get(state.selected.loop);
        if (state.selected.kind !== "loop" || !before || !after || before.status !== after.status) showDetails(state);
      }
      view.dataset.ready = "session";
    } catch (error) { showError(tree, error); }
  }

  function follow(cursor) {
    const source = new EventSource(`/api/sessions/${encodeURIComponent(sessionId)}/live?after=${cursor}`);
    state.source = source;
    source.onopen = () => setLive(true);
    source.onmessage = (message) => {
      const item = JSON.parse(message.data);
      state.loopCache.delete(item.loopId);
      state.changed.add(item.loopId);
      if (state.eventsView && state.eventsView.loopId === item.loopId) state.eventsView.live(item);
      refresh();
    };
    source.addEventListener("end", () => { source.close(); setLive(false); refresh(); });
    source.addEventListener("failure", () => { source.close(); setLive(false); });
  }

  state.reselect = (selection) => { state.selected = selection; markSelection(state); showDetails(state); };
  tree.addEventListener("click", (event) => onPaneClick(state, event));
  timeline.addEventListener("click", (event) => onPaneClick(state, event));
  load(true);
  return { stop: () => { state.stopped = true; if (state.source) state.source.close(); delete view.dataset.ready; } };
}

function setOutline(state, outline) {
  state.outline = outline;
  // A sub-agent badge shows what that sub-agent and everything it spawned cost.
  const spawnedCost = new Map((outline.spawned || []).map((s) => [s.sessionId, s.treeCost]));
  for (const loop of outline.loops) for (const ref of loop.childRefs) ref.cost = spawnedCost.get(ref.childSessionId);
  state.byId = new Map(outline.loops.map((loop) => [loop.id, loop]));
}

function rootsAndChildren(loops, byId) {
  const children = new Map();
  const roots = [];
  for (const loop of loops) {
    if (loop.parent && byId.has(loop.parent)) {
      if (!children.has(loop.parent)) children.set(loop.parent, []);
      children.get(loop.parent).push(loop);
    } else roots.push(loop);
  }
  return { roots, children };
}

function render(state) {
  renderHead(state);
  const { roots, children } = rootsAndChildren(state.outline.loops, state.byId);
  const order = [];
  const walk = (loop) => { order.push(loop); for (const child of children.get(loop.id) || []) walk(child); };
  roots.forEach(walk);
  renderTree(state, roots, children);
  renderTimeline(state, order);
  markSelection(state);
}

function renderHead(state) {
  const { session, usage, finalized, loops, cost, treeCost, spawned } = state.outline;
  const spawn = session.parentSpawnRef;
  const formation = session.formation ? Object.keys(session.formation)[0] : "";
  fill(state.head, [
    h("h1", { class: "mono" }, session.sessionId),
    h("span", {}, "agent ", h("b", {}, session.agentId)),
    h("span", {}, enumName(session.scope || "SESSION_SCOPE_EPHEMERAL", "SESSION_SCOPE_")),
    formation ? h("span", { class: "muted" }, `formed: ${formation}`) : null,
    h("span", { class: "muted" }, `created ${fmtTime(session.createdAt)}`),
    finalized ? h("span", { class: "muted" }, `finalized ${fmtTime(session.finalizedAt)}`) : h("span", { class: "badge" }, "open"),
    h("span", {}, `${loops.length} loops`),
    refusedBadge(state.outline.refusals),
    h("span", { id: "session-usage" }, `tokens: ${fmtNum(usage.total)} (in ${fmtNum(usage.input)}, out ${fmtNum(usage.output)}, cache ${fmtNum(usage.cacheRead)})`),
    cost ? h("span", { id: "session-cost" }, "cost ", costBadge(cost)) : null,
    spawned && spawned.length ? h("details", { id: "tree-cost" },
      h("summary", {}, "with sub-agents ", costBadge(treeCost)),
      h("ul", { class: "spawned" }, spawned.map((s) => h("li", { dataset: { session: s.sessionId } },
        h("a", { href: `#/session/${encodeURIComponent(s.sessionId)}`, class: "mono" }, s.sessionId),
        ` (${s.agentId}) `, costBadge(s.cost))))) : null,
    spawn ? h("a", { href: `#/session/${encodeURIComponent(spawn.parentSessionId)}?loop=${encodeURIComponent(spawn.parentLoopId)}` },
      `↑ spawned by ${spawn.toolName} in ${shortLoop(spawn.parentLoopId)}`) : null]);
}

// Refused events are kept, never hidden: a red count in the head, per loop in the
// tree, and each one (with the reason) in the details pane when the count is clicked.
function refusedBadge(refusals) {
  if (!refusals || !refusals.length) return null;
  return h("a", { class: "badge refused", id: "session-refused", href: "#", onclick: (event) => {
    event.preventDefault();
    fill(document.getElementById("details"), refusalsDetails(refusals));
  } }, `${refusals.length} refused`);
}

function refusalsDetails(refusals) {
  return [h("h2", {}, "Refused events"), ...refusals.map((r) => section(
    `${r.reason} · ${r.loopId || "no loop"} ${r.slot === null ? "(refusal log)" : `#${r.slot}`}`,
    h("p", { class: "refusal-message" }, r.message),
    kv([["refused", fmtTime(r.refusedAt)], ["writer", r.writerId || "-"]]),
    r.sent ? json(r.sent) : h("p", { class: "muted" }, "the bytes sent do not decode as an event")))];
}

function loopRefusals(state, loopId) {
  return (state.outline.refusals || []).filter((r) => r.loopId === loopId).length;
}

function kindBadge(kind) {
  return h("span", { class: "badge kind" }, kind.tag ? `${kind.name}:${kind.tag}` : kind.name);
}

function parallelBadge(loop) {
  if (!loop.parallel) return null;
  return loop.parallel.isSelected
    ? h("span", { class: "badge winner", title: "selected by the parallel evaluation" }, "★ winner")
    : h("span", { class: "badge", title: `parallel group of ${loop.parallel.loops.length}` }, "parallel");
}

// Every clickable item carries the key of what it selects, so one listener per pane
// serves a thousand loops and a new selection only moves a class.
function keyOf(selection) {
  if (!selection) return "";
  if (selection.kind === "loop") return `loop|${selection.loop}`;
  if (selection.kind === "turn") return `turn|${selection.loop}|${selection.turn}`;
  return `tool|${selection.loop}|${selection.turn}|${selection.tool}`;
}

function selectionOf(key) {
  const [kind, loop, turn, ...tool] = key.split("|");
  return { kind, loop, turn: turn === undefined ? undefined : Number(turn), tool: tool.length ? tool.join("|") : undefined };
}

function markSelection(state) {
  for (const el of document.querySelectorAll(".selected")) el.classList.remove("selected");
  const key = keyOf(state.selected);
  if (!key) return;
  for (const el of document.querySelectorAll(`[data-key="${CSS.escape(key)}"]`)) el.classList.add("selected");
}

function onPaneClick(state, event) {
  if (event.target.closest("a")) return;
  const zoom = event.target.closest("[data-zoom]");
  if (zoom) { state.zoom = Number(zoom.dataset.zoom); render(state); return; }
  const toggle = event.target.closest("[data-toggle]");
  if (toggle) {
    const id = toggle.dataset.toggle;
    if (state.expanded.has(id)) state.expanded.delete(id); else state.expanded.add(id);
    render(state);
  }
  const item = event.target.closest("[data-key]");
  if (item) state.reselect(selectionOf(item.dataset.key));
}

function treeNode(loop, refused) {
  return h("div", { class: "node", dataset: { loop: loop.id, key: `loop|${loop.id}` } },
    h("span", { class: `dot s-${loop.status}`, title: loop.status }),
    h("span", { class: "mono" }, shortLoop(loop.id)),
    kindBadge(loop.kind), parallelBadge(loop),
    refused ? h("span", { class: "badge refused", title: "refused events of this loop" }, `${refused} refused`) : null,
    h("span", { class: "tokens" }, `${fmtNum(loop.usage.total)} tok`),
    costBadge(loop.cost),
    loop.childRefs.length ? h("span", { class: "refs" }, loop.childRefs.map((ref) =>
      h("a", { class: "badge sub", href: `#/session/${encodeURIComponent(ref.childSessionId)}?loop=${encodeURIComponent(ref.childLoopId)}` },
        `↳ ${ref.toolName}: sub-agent ${ref.childSessionId}`, ref.cost ? " " : null, costBadge(ref.cost)))) : null);
}

// A chain of single continuations stays at one level (a long conversation would
// otherwise nest a thousand deep); only a fork indents its branches.
function treeBranch(state, first, children) {
  const items = [];
  for (let loop = first; loop;) {
    const li = h("li", {}, treeNode(loop, loopRefusals(state, loop.id)));
    items.push(li);
    const kids = children.get(loop.id) || [];
    if (kids.length > 1) li.append(h("ul", {}, kids.flatMap((kid) => treeBranch(state, kid, children))));
    loop = kids.length === 1 ? kids[0] : null;
  }
  return items;
}

function renderTree(state, roots, children) {
  state.tree.replaceChildren(h("h2", {}, "Loops"), h("ul", {}, roots.flatMap((root) => treeBranch(state, root, children))));
  state.tree.dataset.ready = "1";
}

function timeBounds(order) {
  let start = Infinity, end = -Infinity;
  for (const loop of order) {
    if (loop.start !== null) start = Math.min(start, loop.start);
    end = Math.max(end, loop.end ?? loop.start ?? -Infinity);
    for (const turn of loop.turns || []) end = Math.max(end, turn.end ?? turn.start ?? -Infinity);
    if (loop.status === "running") end = Math.max(end, Date.now());
  }
  if (!isFinite(start)) return { start: 0, span: 1 };
  return { start, span: Math.max(end - start, 1) };
}

// A big session's outline leaves turns out; an expanded loop fetches its own.
async function fetchTurns(state, loop) {
  if (loop.fetching) return;
  loop.fetching = true;
  try {
    const full = await getJson(`/api/loops/${encodeURIComponent(loop.id)}/outline`);
    if (state.byId.get(loop.id) === loop) { loop.turns = full.turns; render(state); }
  } catch (error) { loop.fetching = false; }
}

function timelineRow(cls, key, label, labelAttrs, bar) {
  return h("div", { class: `row ${cls}`, dataset: { key } },
    h("div", { class: "label", ...labelAttrs }, ...label),
    h("div", { class: "track" }, bar));
}

function renderTimeline(state, order) {
  const { start, span } = timeBounds(order);
  const pos = (from, to) => {
    const left = from === null ? 0 : ((from - start) / span) * 100;
    const right = to === null ? 100 : ((to - start) / span) * 100;
    return `left:${left.toFixed(3)}%;width:${Math.max(right - left, 0.2).toFixed(3)}%`;
  };
  const axis = h("div", { class: "axis" });
  const ticks = 4 * state.zoom;
  for (let i = 0; i <= ticks; i++) {
    const shift = i === 0 ? "0" : i === ticks ? "-100%" : "-50%"; // the ends stay inside the pane
    axis.append(h("span", { style: `left:${(i * 100) / ticks}%;transform:translateX(${shift})` },
      `+${fmtSpan((span * i) / ticks)}`));
  }
  const rows = document.createDocumentFragment();
  for (const loop of order) {
    const open = state.expanded.has(loop.id);
    const end = loop.end ?? (loop.status === "running" ? null : loop.start);
    rows.append(timelineRow("loop", `loop|${loop.id}`,
      [h("span", { class: "toggle" }, loop.turnCount ? (open ? "▾" : "▸") : ""), shortLoop(loop.id)],
      { title: loop.id, dataset: { toggle: loop.id } },
      h("div", { class: `bar s-${loop.status}`, style: pos(loop.start, end), dataset: { loop: loop.id },
        title: [loop.id, loop.status, loop.model, fmtSpan(loop.end && loop.start ? loop.end - loop.start : null)]
          .filter(Boolean).join(" · ") })));
    if (!open) continue;
    if (!loop.turns) { fetchTurns(state, loop); continue; }
    for (const turn of loop.turns) {
      rows.append(timelineRow("turn", `turn|${loop.id}|${turn.index}`, [`turn ${turn.index}`], {},
        h("div", { class: "bar", style: pos(turn.start, turn.end),
          title: `turn ${turn.index} · ${turn.trigger} · ${fmtNum(turn.tokens)} tok · ${fmtCost(turn.cost)}` })));
      for (const tool of turn.tools) {
        rows.append(timelineRow("tool", `tool|${loop.id}|${turn.index}|${tool.id}`, [`⚙ ${tool.name}`], {},
          h("div", { class: `bar${tool.isError ? " error" : ""}`, style: pos(tool.start, tool.end),
            title: `${tool.name} (${tool.id})`, dataset: { tool: tool.id } })));
      }
    }
  }
  const zoom = (factor) => h("button", { type: "button", class: factor === state.zoom ? "zoom on" : "zoom", dataset: { zoom: factor } },
    factor === 1 ? "fit" : `${factor}×`);
  state.timeline.style.setProperty("--zoom", String(state.zoom));
  state.timeline.replaceChildren(h("h2", {}, "Timeline ", [1, 4, 16, 64, 256].map(zoom)),
    h("div", { class: "tl-body" }, axis, rows));
  state.timeline.dataset.ready = "1";
}

// ---------------------------------------------------------------- details

async function loopRecord(state, loopId) {
  if (!state.loopCache.has(loopId)) state.loopCache.set(loopId, getJson(`/api/loops/${encodeURIComponent(loopId)}`));
  try { return await state.loopCache.get(loopId); } catch (error) { state.loopCache.delete(loopId); throw error; }
}

async function showDetails(state) {
  const selection = state.selected;
  if (!selection) return;
  const box = state.details;
  try {
    const loop = await loopRecord(state, selection.loop);
    if (state.selected !== selection) return;
    const turn = (loop.turns || []).find((t) => (t.turnId?.turnIndex || 0) === (selection.turn || 0));
    if (selection.kind === "tool") fill(box, toolDetails(state, loop, turn, selection.tool));
    else if (selection.kind === "turn") fill(box, turnDetails(turn, outlineTurn(state, selection)));
    else fill(box, loopDetails(state, loop));
  } catch (error) { showError(box, error); }
}

function outlineTurn(state, selection) {
  const loop = state.byId.get(selection.loop);
  return ((loop && loop.turns) || []).find((t) => t.index === (selection.turn || 0));
}

function costKv(cost) {
  if (!cost) return h("span", { class: "muted" }, "not computed");
  return kv([["cost", costBadge(cost)], ["prices", cost.source],
    ["calls priced", cost.pricedCalls ? String(cost.pricedCalls) : "0"],
    ["calls unpriced", cost.unpricedCalls ? String(cost.unpricedCalls) : null],
    ["why unpriced", cost.unpricedReason]]);
}

function section(title, ...content) {
  return h("section", {}, h("h3", {}, title), ...content);
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function usageKv(usage) {
  usage = usage || {};
  return kv([["input", fmtNum(usage.input)], ["output", fmtNum(usage.output)], ["reasoning", fmtNum(usage.reasoning)],
    ["cache read", fmtNum(usage.cacheRead)], ["cache write", fmtNum(usage.cacheWrite)],
    ["total", fmtNum(usageTotal(usage))]]);
}

function loopDetails(state, loop) {
  const outline = state.byId.get(loop.loopId);
  const kind = outline ? outline.kind : { name: "", tag: "" };
  const group = loop.parallelGroup;
  return [
    h("h2", {}, "Loop"),
    kv([["id", h("span", { class: "mono" }, loop.loopId)], ["status", enumName(loop.status, "LOOP_STATUS_")],
      ["continuation", kind.tag ? `${kind.name}:${kind.tag}` : kind.name], ["parent", loop.parentLoopId],
      ["agent", loop.agentId], ["started", fmtTime(loop.startedAt)], ["ended", fmtTime(loop.endedAt)],
      ["rejection", loop.rejection]]),
    section("Usage", usageKv(loop.usage)),
    section("Cost", costKv(outline && outline.cost)),
    group ? section("Parallel group", kv([["loops", group.allLoopIds.map(shortLoop).join(", ")],
      ["winner", group.selectedLoopId], ["this loop", group.isSelected ? "★ selected" : "not selected"]]),
      group.evaluationUsage ? usageKv(group.evaluationUsage) : null) : null,
    (loop.childLoopRefs || []).length ? section("Sub-agents", ...loop.childLoopRefs.map((ref) => h("div", {},
      h("a", { href: `#/session/${encodeURIComponent(ref.childSessionId)}?loop=${encodeURIComponent(ref.childLoopId)}` },
        `${ref.toolName} (${ref.toolCallId}) → session ${ref.childSessionId}`)))) : null,
    section("Config snapshot", json(loop.config || {})),
    loop.metadata !== undefined ? section("Metadata", json(loop.metadata)) : null,
    section(`Turns (${(loop.turns || []).length})`, ...(loop.turns || []).map((turn) => h("div", {},
      h("a", { href: "#", onclick: (e) => e.preventDefault() || state.reselect({ kind: "turn", loop: loop.loopId, turn: turn.turnId?.turnIndex || 0 }) },
        `turn ${turn.turnId?.turnIndex || 0}`), " ", h("span", { class: "muted" },
        `${enumName(turn.triggeredBy, "TURN_TRIGGER_")} · ${fmtNum(usageTotal(turn.usage))} tok`), " ",
        costBadge(outlineTurn(state, { loop: loop.loopId, turn: turn.turnId?.turnIndex || 0 })?.cost)))),
    section(`Messages (${(loop.messages || []).length})`, ...(loop.messages || []).map(message)),
    eventsSection(state, loop.loopId),
  ];
}

function turnDetails(turn, outline) {
  if (!turn) return [h("p", { class: "muted" }, "This turn is not recorded (yet).")];
  return [
    h("h2", {}, `Turn ${turn.turnId?.turnIndex || 0}`),
    kv([["loop", h("span", { class: "mono" }, turn.turnId?.loopId)], ["trigger", enumName(turn.triggeredBy, "TURN_TRIGGER_")],
      ["started", fmtTime(turn.startedAt)], ["ended", fmtTime(turn.endedAt)]]),
    section("Usage", usageKv(turn.usage)),
    section("Cost", outline && outline.model ? h("div", { class: "muted" }, `model ${outline.model}`) : null,
      costKv(outline && outline.cost)),
    section(`Input messages (${(turn.inputMessages || []).length})`, ...(turn.inputMessages || []).map(message)),
    section("Answer", turn.outputMessage ? message(turn.outputMessage) : h("span", { class: "muted" }, "none yet")),
    section(`Tool results (${(turn.toolResults || []).length})`, ...(turn.toolResults || []).map(message)),
    turn.requestPayload ? section("Request payload", json(turn.requestPayload)) : null,
  ];
}

function toolDetails(state, loop, turn, toolId) {
  const call = ((turn && turn.outputMessage && turn.outputMessage.content) || [])
    .map((b) => b.toolCall).find((c) => c && c.id === toolId);
  const result = ((turn && turn.toolResults) || []).find((m) => m.toolCallId === toolId);
  const ref = (loop.childLoopRefs || []).find((r) => r.toolCallId === toolId);
  return [
    h("h2", {}, `Tool call ${call ? call.name : toolId}`),
    kv([["call id", h("span", { class: "mono" }, toolId)], ["loop", h("span", { class: "mono" }, loop.loopId)],
      ["turn", turn ? String(turn.turnId?.turnIndex || 0) : ""], ["error", result && result.isError ? "yes" : ""]]),
    section("Arguments", h("div", { id: "tool-arguments" }, json(call ? call.arguments ?? null : null))),
    section("Result", toolResult(loop.loopId, toolId, result)),
    ref ? section("Sub-agent", h("a", { href: `#/session/${encodeURIComponent(ref.childSessionId)}?loop=${encodeURIComponent(ref.childLoopId)}` },
      `session ${ref.childSessionId}, loop ${shortLoop(ref.childLoopId)}`)) : null,
  ];
}

// The turn's tool result if it carries one, else the one recorded in the call's
// ToolExecutionEnd (fetched: the loop record is read without its events).
function toolResult(loopId, toolId, result) {
  if (result) return h("div", { id: "tool-result" }, message(result));
  const box = h("div", { id: "tool-result" }, h("span", { class: "muted" }, "loading…"));
  getJson(`/api/loops/${encodeURIComponent(loopId)}/tools/${encodeURIComponent(toolId)}`)
    .then((end) => fill(box, end ? toolEnd(end) : [h("span", { class: "muted" }, "no result recorded")]))
    .catch((error) => showError(box, error));
  return box;
}

function toolEnd(end) {
  const result = end.result || {};
  return [
    h("div", { class: "muted" }, ["from its ToolExecutionEnd", end.isError && "error"].filter(Boolean).join(" · ")),
    ...(result.content || []).map(block),
    result.details !== undefined ? json(result.details) : null,
  ];
}

function message(msg) {
  const role = enumName(msg.role, "MESSAGE_ROLE_") || "unspecified";
  const facts = [msg.model, msg.provider, msg.stopReason && enumName(msg.stopReason, "STOP_REASON_"),
    msg.toolName && `${msg.toolName} (${msg.toolCallId})`, msg.isError && "error",
    msg.timestamp && fmtTime(msg.timestamp)].filter(Boolean).join(" · ");
  return h("div", { class: `msg role-${role}` },
    h("div", {}, h("b", {}, role), " ", h("span", { class: "muted" }, facts)),
    msg.errorMessage ? h("div", { class: "error" }, msg.errorMessage) : null,
    (msg.content || []).map(block),
    msg.extensionKind ? json({ kind: msg.extensionKind, data: msg.extensionData }) : null,
    msg.usage ? h("div", { class: "muted" }, `usage: ${fmtNum(usageTotal(msg.usage))} tok`) : null);
}

function block(content) {
  if (content.text) return h("div", { class: "block block-text" }, h("pre", {}, content.text.text || ""));
  if (content.thinking) return h("div", { class: "block block-thinking" }, h("pre", {}, content.thinking.thinking || ""));
  if (content.toolCall) return h("div", { class: "block block-tool" },
    h("span", { class: "badge sub" }, `⚙ ${content.toolCall.name}`), " ", h("span", { class: "mono muted" }, content.toolCall.id),
    json(content.toolCall.arguments ?? null));
  if (content.image) return h("div", { class: "block block-image" },
    h("img", { alt: "image block", src: `data:${content.image.mimeType};base64,${content.image.data}` }));
  return json(content);
}

// ---------------------------------------------------------------- raw events (paged)

const EVENTS_PAGE = 200;

function eventsSection(state, loopId) {
  const body = h("tbody", {});
  const more = h("button", { type: "button" }, "load more");
  const status = h("span", { class: "muted" });
  let after = 0, done = false, loading = false, count = 0;

  const addRow = (item) => {
    const refused = item.refused;
    const kind = refused ? `REFUSED ${refused.reason}: ${refused.message}` : Object.keys(item.event)[0] || "?";
    const raw = h("tr", { hidden: true }, h("td", { colspan: 3 }, json(refused || item.event)));
    body.append(h("tr", { class: refused ? "ev refused" : "ev", onclick: () => { raw.hidden = !raw.hidden; } },
      h("td", { class: "mono" }, item.sequence ?? 0), h("td", {}, kind), h("td", { class: "muted" }, `cursor ${item.cursor}`)), raw);
    count += 1;
    after = Math.max(after, item.cursor);
    status.textContent = `${count} shown`;
  };

  async function page() {
    if (loading || done) return;
    loading = true;
    more.disabled = true;
    try {
      const result = await getJson(`/api/loops/${encodeURIComponent(loopId)}/events?after=${after}&limit=${EVENTS_PAGE}`);
      result.events.forEach(addRow);
      done = !result.more;
    } catch (error) { status.textContent = String(error.message || error); }
    loading = false;
    more.disabled = done;
    more.hidden = done;
  }

  // Live events of this loop are appended once every stored one is shown.
  state.eventsView = { loopId, live: (item) => { if (done && item.cursor > after) addRow(item); } };
  more.addEventListener("click", page);
  page();
  return section("Raw events", h("table", { class: "events" }, body), h("div", { class: "pager" }, more, status));
}
