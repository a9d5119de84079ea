"""The observer page's script (see `assets`; its cluster-scoped section is in
`script_scoped`): it polls the JSON routes every second,
draws the per-node rate charts (axes in events per second and seconds ago), and
inserts every value with ``textContent``, never as HTML."""

from __future__ import annotations

from typing import Final

from .script_scoped import SCOPED_SCRIPT

__all__ = ["SCRIPT"]

_SCRIPT: Final = r"""
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const headers = token ? { "X-Procreg-Token": token } : {};
  const state = { node: null, self: null, offset: 0, limit: 50, query: "", cursor: 0,
                  back: [], next: null, total: 0, writable: false, detail: null };
  const BEHAVIOURS = { coroutine: "coroutine", server: "server", supervisor: "supervisor",
                       pi: "pi (n2o_pi)", session: "session",
                       connection: "WebSocket connection" };
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                   "#4b5563", "#ca8a04"];
  const colourOf = {};

  function $(id) { return document.getElementById(id); }
  function cell(value, cls) {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
    if (cls) td.className = cls;
    return td;
  }
  function tr(cells, cls) {
    const row = document.createElement("tr");
    for (const c of cells) row.appendChild(c);
    if (cls) row.className = cls;
    return row;
  }
  function num(value) { return cell(value, "num"); }
  function count(n) { return Number(n).toLocaleString("en"); }
  function rate(n) {
    if (n >= 10000) return (n / 1000).toFixed(0) + "k";
    if (n >= 1000) return (n / 1000).toFixed(1) + "k";
    return n >= 10 ? n.toFixed(0) : String(n);
  }
  function duration(s) {
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + " h " + String(m % 60).padStart(2, "0") + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }
  function behaviour(name) { return BEHAVIOURS[name] || name; }
  async function getJSON(url, options) {
    const response = await fetch(url, Object.assign({ headers: headers }, options || {}));
    if (!response.ok) {
      let why = response.status + " " + url;
      try { why = (await response.json()).error || why; } catch (e) { /* not JSON */ }
      throw new Error(why);
    }
    return response.json();
  }
  function setStatus(text) { $("status").textContent = text; }
  function nodeParam() { return "node=" + encodeURIComponent(state.node || ""); }
  function colour(name) {
    if (!(name in colourOf)) colourOf[name] = COLOURS[Object.keys(colourOf).length %
                                                       COLOURS.length];
    return colourOf[name];
  }

  // -- charts: one line per node, y axis in events per second, x axis in seconds ago
  function axisLabel(n) {
    if (n >= 1000) return (n / 1000).toLocaleString("en", { maximumFractionDigits: 2 }) + "k";
    return n.toLocaleString("en", { maximumFractionDigits: 2 });
  }
  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }
  function drawChart(canvas, history, field) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const left = 58, right = 10, top = 10, bottom = 26, span = 60;
    const plotW = W - left - right, plotH = H - top - bottom;
    ctx.clearRect(0, 0, W, H);
    let max = 0;
    for (const name in history) {
      for (const p of history[name]) if (p.ago <= span) max = Math.max(max, p[field]);
    }
    const top_ = niceMax(Math.max(max, 2));
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const y = top + (1 - f) * plotH;
      ctx.strokeStyle = f === 0 ? "#9ca3af" : "#eef0f3";
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(W - right, y); ctx.stroke();
      if (f === 0 || f === 0.5 || f === 1) {
        ctx.fillStyle = "#555";
        ctx.fillText(axisLabel(top_ * f) + " /s", left - 6, y);
      }
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const ago of [60, 45, 30, 15, 0]) {
      const x = left + (1 - ago / span) * plotW;
      ctx.strokeStyle = "#9ca3af";
      ctx.beginPath(); ctx.moveTo(x, top + plotH); ctx.lineTo(x, top + plotH + 4); ctx.stroke();
      ctx.fillStyle = "#555";
      ctx.fillText(ago ? "\u2212" + ago + " s" : "now", x, top + plotH + 7);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.beginPath(); ctx.moveTo(left, top); ctx.lineTo(left, top + plotH); ctx.stroke();
    ctx.lineWidth = 2;
    for (const name in history) {
      const points = history[name].filter(p => p.ago <= span);
      if (!points.length) continue;
      ctx.strokeStyle = colour(name);
      ctx.beginPath();
      points.forEach((p, i) => {
        const x = left + (1 - p.ago / span) * plotW;
        const y = top + (1 - p[field] / top_) * plotH;
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }
  function legend(names) {
    $("legend").replaceChildren(...names.map(name => {
      const span = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.className = "swatch";
      swatch.style.background = colour(name);
      span.appendChild(swatch);
      span.appendChild(document.createTextNode(name));
      return span;
    }));
  }

  function browseButton(name) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "processes";
    button.addEventListener("click", () => selectNode(name));
    return button;
  }

  function nodeRow(n) {
    const label = n.node + (n.creation !== undefined ? "." + n.creation : "") +
      (n.self ? " (this node)" : "");
    if (!n.answered) {
      return tr([cell(label), cell("no answer: " + n.error)], "down");
    }
    const c = n.cluster;
    const frames = c ? count(c.frames_sent) + " / " + count(c.frames_received) + " / " +
      count(c.frames_dropped) : "\u2013";
    const st = c ? (c.fencing ? "fenced" : c.store_up ? "up" : "store unreachable") : "up";
    return tr([
      cell(label), cell(st), num(count(n.processes)), num(count(n.spawned)),
      num(count(n.exited)), num(count(n.crashed)), num(count(n.restarts)),
      num(count(n.handled)), num(count(n.calls)), num(count(n.dropped)),
      num(count(n.overloaded)), num(count(n.runq)), num(duration(n.uptime)),
      num(rate(n.rates.spawn)), num(rate(n.rates.messages)), num(frames),
      num(c ? c.renewal_ms.toFixed(1) + " ms" : "\u2013"),
      num(c ? count(c.fences) : "\u2013"), cell(browseButton(n.node)),
    ], n.self ? "self" : "");
  }

  function fillNodeSelect(nodes) {
    const select = $("node-select");
    const names = nodes.map(n => n.node);
    const current = Array.from(select.options).map(o => o.value);
    if (names.join("\n") !== current.join("\n")) {
      select.replaceChildren(...names.map(name => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }));
    }
    if (state.node === null || names.indexOf(state.node) < 0) state.node = state.self;
    select.value = state.node;
  }

  async function overview() {
    const data = await getJSON("api/overview");
    state.writable = data.writable;
    state.self = data.self;
    $("scope").textContent = data.clustered ? "cluster of " + data.nodes.length +
      " node" + (data.nodes.length === 1 ? "" : "s") : "embedded node";
    $("mode").textContent = data.writable && token ? "writable" : "read-only";
    $("nodes-count").textContent = "(" + data.nodes.length + " live)";
    $("nodes").tBodies[0].replaceChildren(...data.nodes.map(nodeRow));
    fillNodeSelect(data.nodes);
    const names = Object.keys(data.history).sort();
    drawChart($("chart-messages"), data.history, "messages");
    drawChart($("chart-spawns"), data.history, "spawn");
    legend(names);
    const events = data.events.slice().reverse();
    $("events").tBodies[0].replaceChildren(...(events.length ? events.map(e => tr([
      cell(new Date(e.time * 1000).toLocaleTimeString()), cell(e.kind), cell(e.node),
      cell(e.detail), cell(e.reporter)], "event-" + e.kind)) :
      [tr([cell("no cluster events yet", "muted")])]));
    $("tables-scope").textContent = data.partial ?
      "(the nodes that answered: counts are partial)" : "(all nodes)";
    $("tables").tBodies[0].replaceChildren(...data.tables.map(t => tr([
      cell(t.table), num(count(t.count)),
      cell(Object.keys(t.nodes).sort().map(n => n + " " + count(t.nodes[n])).join(" \u00b7 ")),
    ])));
    $("pools").tBodies[0].replaceChildren(...data.pools.map(p => tr([
      cell(p.group), num(count(p.members))])));
    $("groups-total").textContent = "(" + count(data.groups_total) + ")";
  }

  function killButton(pid) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "kill";
    button.textContent = "kill";
    button.addEventListener("click", async (event) => {
      event.stopPropagation();
      if (!confirm("kill " + pid + "?")) return;
      try {
        await getJSON("api/processes/" + encodeURIComponent(pid) + "/kill",
                      { method: "POST" });
      } catch (err) { setStatus("kill failed: " + err.message); }
      processes();
    });
    return button;
  }

  function processRow(p) {
    const row = tr([
      cell(p.pid), cell(behaviour(p.behaviour)), cell(p.kind), cell(p.keys.join(", ")),
      cell(p.groups.join(", ")),
      num(p.max_mailbox === null ? p.mailbox : p.mailbox + " / " + p.max_mailbox),
      num(p.mailbox_peak), num(count(p.dropped)), num(count(p.handled)),
      num(duration(p.age)), cell(p.status),
      cell(state.writable && token ? killButton(p.pid) : ""),
    ]);
    row.addEventListener("click", () => openProcess(p.pid));
    return row;
  }

  async function processes() {
    if (state.node === null) return;
    let url;
    if (state.query) {
      url = "api/processes?" + nodeParam() + "&q=" + encodeURIComponent(state.query) +
        "&cursor=" + state.cursor + "&limit=" + state.limit;
    } else {
      url = "api/processes?" + nodeParam() + "&offset=" + state.offset + "&limit=" +
        state.limit;
    }
    const data = await getJSON(url);
    state.total = data.total;
    $("processes").tBodies[0].replaceChildren(...data.rows.map(processRow));
    const info = $("proc-info");
    if (state.query) {
      state.next = data.next_cursor;
      let text = data.rows.length + " matches for \u201c" + data.query + "\u201d among " +
        "processes " + data.cursor + "\u2013" + (data.cursor + data.scanned) + " of " +
        count(data.total) + " on " + data.node;
      if (data.truncated) text += " (search stopped after " + data.scanned +
        " processes; \u201cnext\u201d searches on)";
      info.textContent = text;
      $("prev").disabled = state.back.length === 0;
      $("next").disabled = data.next_cursor === null;
    } else {
      const last = Math.min(data.total, data.offset + data.rows.length);
      info.textContent = "processes " + (data.total ? data.offset + 1 : 0) + "\u2013" +
        last + " of " + count(data.total) + " on " + data.node + " (oldest first)";
      $("prev").disabled = data.offset === 0;
      $("next").disabled = last >= data.total;
    }
  }

  const DETAIL = [["node", "node"], ["behaviour", "behaviour"], ["kind", "class"],
    ["status", "status"], ["keys", "registered keys"], ["groups", "groups"],
    ["mailbox", "mailbox"], ["max_mailbox", "mailbox bound"], ["overflow", "when full"],
    ["mailbox_peak", "mailbox high-water"], ["dropped", "messages dropped"],
    ["handled", "messages handled"], ["age", "age"], ["links", "links"],
    ["monitors", "monitored by"]];

  async function openProcess(pid) {
    state.detail = pid;
    let row;
    try {
      row = await getJSON("api/processes/" + encodeURIComponent(pid));
    } catch (err) {
      $("detail-pid").textContent = pid + " \u2014 " + err.message;
      $("process-detail").replaceChildren();
      $("detail").hidden = false;
      return;
    }
    $("detail-pid").textContent = row.pid;
    const items = [];
    for (const [field, label] of DETAIL) {
      let value = row[field];
      if (field === "behaviour") value = behaviour(value);
      else if (field === "age") value = duration(value);
      else if (Array.isArray(value)) value = value.length ? value.join(", ") : "none";
      else if (value === null) value = "none";
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = String(value);
      dd.dataset.field = field;
      items.push(dt, dd);
    }
    $("process-detail").replaceChildren(...items);
    $("detail").hidden = false;
  }

  function treeNode(entry) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = entry.kind === "supervisor" ? "sup" : "";
    let text = entry.id + " \u2014 " + (entry.pid || "not running") + " (" + entry.kind;
    if (entry.behaviour && entry.behaviour !== entry.kind) text += ", " +
      behaviour(entry.behaviour);
    if (entry.process_kind && entry.process_kind.toLowerCase() !== entry.kind) {
      text += ", " + entry.process_kind;
    }
    if (entry.restart) text += ", " + entry.restart;
    text += ")";
    if (entry.keys && entry.keys.length) text += " " + entry.keys.join(", ");
    if (entry.error) text += " \u2014 " + entry.error;
    label.textContent = text;
    li.appendChild(label);
    if (entry.children && entry.children.length) {
      const ul = document.createElement("ul");
      for (const child of entry.children) ul.appendChild(treeNode(child));
      li.appendChild(ul);
    }
    return li;
  }

  async function tree() {
    if (state.node === null) return;
    const data = await getJSON("api/tree?" + nodeParam());
    $("tree-node").textContent = data.node;
    const list = $("tree");
    if (!data.trees.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "no supervisor is running on " + data.node;
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(...data.trees.map(treeNode));
  }

  function selectNode(name) {
    state.node = name;
    $("node-select").value = name;
    state.offset = 0; state.cursor = 0; state.back = [];
    processes().catch(err => setStatus(err.message));
    tree().catch(err => setStatus(err.message));
  }

  function looksLikePid(text) { return /^<?[^<>\s]+\.\d+\.\d+>?$/.test(text); }

  $("node-select").addEventListener("change", () => selectNode($("node-select").value));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("search").value.trim();
    if (looksLikePid(text)) { openProcess(text.startsWith("<") ? text : "<" + text + ">"); }
    state.query = text;
    state.cursor = 0; state.back = []; state.offset = 0;
    processes().catch(err => setStatus(err.message));
  });
  $("clear").addEventListener("click", () => {
    $("search").value = ""; state.query = ""; state.offset = 0; state.back = [];
    processes().catch(err => setStatus(err.message));
  });
  $("prev").addEventListener("click", () => {
    if (state.query) { state.cursor = state.back.pop() || 0; }
    else { state.offset = Math.max(0, state.offset - state.limit); }
    processes().catch(err => setStatus(err.message));
  });
  $("next").addEventListener("click", () => {
    if (state.query) {
      if (state.next === null) return;
      state.back.push(state.cursor); state.cursor = state.next;
    } else { state.offset += state.limit; }
    processes().catch(err => setStatus(err.message));
  });
  $("detail-close").addEventListener("click", () => {
    state.detail = null; $("detail").hidden = true;
  });
  $("tree-refresh").addEventListener("click", () => {
    tree().catch(err => setStatus(err.message));
  });

/*SCOPED*/
  async function tick() {
    try {
      const first = state.node === null;
      await overview();
      if (first) tree().catch(err => setStatus(err.message));
      if (!state.query) await processes();
      if (state.detail !== null) await openProcess(state.detail);
      await scopedProcesses();
      setStatus("live \u00b7 " + new Date().toLocaleTimeString());
    } catch (err) {
      setStatus("disconnected: " + err.message);
    }
  }
  tick();
  setInterval(tick, 1000);
  setInterval(() => { tree().catch(() => {}); }, 5000);
})();
"""

SCRIPT: Final = _SCRIPT.replace("/*SCOPED*/", SCOPED_SCRIPT)
"""The whole script, the cluster-scoped section (`script_scoped`) included."""
