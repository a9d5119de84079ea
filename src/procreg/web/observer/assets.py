"""The observer's page, script and stylesheet, served from strings (no build step, no
CDN). The script inserts every value with ``textContent``, never as HTML, and talks
only to the JSON routes next to the page (relative URLs, so it works wherever the
observer is mounted)."""

from __future__ import annotations

from typing import Final

__all__ = ["INDEX_HTML", "SCRIPT", "STYLE"]

INDEX_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>procreg observer</title>
<link rel="stylesheet" href="observer.css">
</head>
<body>
<header>
  <h1>procreg observer</h1>
  <span id="status" class="muted">connecting…</span>
</header>
<main>
<section id="nodes-section">
  <h2>Nodes</h2>
  <table id="nodes">
    <thead><tr><th>node</th><th>processes</th><th>spawned</th><th>exited</th>
      <th>crashed</th><th>messages</th><th title="messages refused by full mailboxes">dropped</th>
      <th title="processes ended with reason overload">overloaded</th><th>run queue</th>
      <th>uptime</th>
      <th>spawn/s</th><th>exit/s</th><th>messages/s</th></tr></thead>
    <tbody></tbody>
  </table>
  <canvas id="spark" width="720" height="70" aria-label="messages and spawns per second">
  </canvas>
  <p class="muted legend"><span class="key-msg">■</span> messages/s
    <span class="key-spawn">■</span> spawns/s (last minute)</p>
</section>
<section id="registry-section" class="columns">
  <div>
    <h2>Tables</h2>
    <table id="tables"><thead><tr><th>table</th><th>entries</th></tr></thead>
      <tbody></tbody></table>
  </div>
  <div>
    <h2>Pools and groups <span id="groups-total" class="muted"></span></h2>
    <table id="pools"><thead><tr><th>group</th><th>members</th></tr></thead>
      <tbody></tbody></table>
  </div>
</section>
<section id="processes-section">
  <h2>Processes</h2>
  <form id="search-form" autocomplete="off">
    <input id="search" type="search" placeholder="search pid, kind, key or group"
      aria-label="search processes">
    <button type="submit">search</button>
    <button type="button" id="clear">clear</button>
  </form>
  <p id="proc-info" class="muted"></p>
  <table id="processes">
    <thead><tr><th>pid</th><th>kind</th><th>keys</th><th>groups</th>
      <th title="messages waiting (/ its bound)">mailbox</th>
      <th title="most messages that waited at once">peak</th>
      <th title="messages its full mailbox refused">dropped</th>
      <th>handled</th><th>age (s)</th><th>status</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
  <p class="pager">
    <button type="button" id="prev">&lsaquo; previous</button>
    <button type="button" id="next">next &rsaquo;</button>
  </p>
</section>
<section id="tree-section">
  <h2>Supervision tree <button type="button" id="tree-refresh">refresh</button></h2>
  <ul id="tree" class="tree"></ul>
</section>
</main>
<script src="observer.js"></script>
</body>
</html>
"""

STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { display: flex; gap: 1em; align-items: baseline; padding: .6em 1em;
  background: #243447; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
main { padding: 0 1em 2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; }
header .muted { color: #cbd5e1; }
.columns { display: flex; gap: 2em; flex-wrap: wrap; }
.tree, .tree ul { list-style: none; padding-left: 1.2em; }
.tree li { margin: .15em 0; }
.tree .sup { font-weight: 600; }
.key-msg { color: #2563eb; } .key-spawn { color: #dc2626; }
canvas { display: block; margin-top: .5em; background: #fff; border: 1px solid #ddd; }
button.kill { color: #b91c1c; }
#processes td { max-width: 28em; overflow-wrap: anywhere; }
"""

SCRIPT: Final = r"""
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const headers = token ? { "X-Procreg-Token": token } : {};
  const state = { offset: 0, limit: 50, query: "", cursor: 0, back: [], next: null,
                  total: 0, writable: false };

  function $(id) { return document.getElementById(id); }
  function cell(value, cls) {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
    if (cls) td.className = cls;
    return td;
  }
  function tr(cells) {
    const row = document.createElement("tr");
    for (const c of cells) row.appendChild(c);
    return row;
  }
  function num(value) { return cell(value, "num"); }
  async function getJSON(url, options) {
    const response = await fetch(url, Object.assign({ headers: headers }, options || {}));
    if (!response.ok) throw new Error(response.status + " " + url);
    return response.json();
  }
  function setStatus(text) { $("status").textContent = text; }

  function drawSpark(history) {
    const canvas = $("spark");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!history.length) return;
    const series = [["messages", "#2563eb"], ["spawn", "#dc2626"]];
    for (const [name, color] of series) {
      const values = history.map(h => h[name]);
      const max = Math.max(1, ...values);
      ctx.strokeStyle = color;
      ctx.beginPath();
      values.forEach((v, i) => {
        const x = (i / Math.max(1, values.length - 1)) * (canvas.width - 4) + 2;
        const y = canvas.height - 4 - (v / max) * (canvas.height - 8);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }

  async function overview() {
    const data = await getJSON("api/overview");
    state.writable = data.writable;
    $("nodes").tBodies[0].replaceChildren(...data.nodes.map(n => tr([
      cell(n.node + "." + n.creation), num(n.processes), num(n.spawned), num(n.exited),
      num(n.crashed), num(n.handled), num(n.dropped), num(n.overloaded), num(n.runq),
      num(n.uptime.toFixed(0) + " s"),
      num(n.rates.spawn), num(n.rates.exit), num(n.rates.messages),
    ])));
    $("tables").tBodies[0].replaceChildren(...data.tables.map(t => tr([
      cell(t.table), num(t.count)])));
    $("pools").tBodies[0].replaceChildren(...data.pools.map(p => tr([
      cell(p.group), num(p.members)])));
    $("groups-total").textContent = "(" + data.groups_total + ")";
    drawSpark(data.history);
  }

  function killButton(pid) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "kill";
    button.textContent = "kill";
    button.addEventListener("click", async () => {
      if (!confirm("kill " + pid + "?")) return;
      try {
        await getJSON("api/processes/" + encodeURIComponent(pid) + "/kill",
                      { method: "POST" });
      } catch (err) { setStatus("kill failed: " + err.message); }
      processes();
    });
    return button;
  }

  async function processes() {
    let url;
    if (state.query) {
      url = "api/processes?q=" + encodeURIComponent(state.query) + "&cursor=" +
        state.cursor + "&limit=" + state.limit;
    } else {
      url = "api/processes?offset=" + state.offset + "&limit=" + state.limit;
    }
    const data = await getJSON(url);
    state.total = data.total;
    $("processes").tBodies[0].replaceChildren(...data.rows.map(p => tr([
      cell(p.pid), cell(p.kind), cell(p.keys.join(", ")), cell(p.groups.join(", ")),
      num(p.max_mailbox === null ? p.mailbox : p.mailbox + " / " + p.max_mailbox),
      num(p.mailbox_peak), num(p.dropped),
      num(p.handled), num(p.age.toFixed(1)), cell(p.status),
      cell(state.writable && token ? killButton(p.pid) : ""),
    ])));
    const info = $("proc-info");
    if (state.query) {
      state.next = data.next_cursor;
      let text = data.rows.length + " matches for \u201c" + data.query + "\u201d among " +
        "processes " + data.cursor + "\u2013" + (data.cursor + data.scanned) + " of " +
        data.total;
      if (data.truncated) text += " (search stopped after " + data.scanned +
        " processes; \u201cnext\u201d searches on)";
      info.textContent = text;
      $("prev").disabled = state.back.length === 0;
      $("next").disabled = data.next_cursor === null;
    } else {
      const last = Math.min(data.total, data.offset + data.rows.length);
      info.textContent = "processes " + (data.total ? data.offset + 1 : 0) + "\u2013" +
        last + " of " + data.total + " (oldest first)";
      $("prev").disabled = data.offset === 0;
      $("next").disabled = last >= data.total;
    }
  }

  function treeNode(entry) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = entry.kind === "supervisor" ? "sup" : "";
    let text = entry.id + " \u2014 " + (entry.pid || "not running") + " (" + entry.kind;
    if (entry.process_kind) text += ", " + entry.process_kind;
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
    const data = await getJSON("api/tree");
    const list = $("tree");
    if (!data.trees.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "no supervisor is running";
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(...data.trees.map(treeNode));
  }

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = $("search").value.trim();
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
  $("tree-refresh").addEventListener("click", () => {
    tree().catch(err => setStatus(err.message));
  });

  async function tick() {
    try {
      await overview();
      if (!state.query) await processes();
      setStatus("live \u00b7 " + new Date().toLocaleTimeString());
    } catch (err) {
      setStatus("disconnected: " + err.message);
    }
  }
  tick();
  tree().catch(err => setStatus(err.message));
  setInterval(tick, 1000);
  setInterval(() => { tree().catch(() => {}); }, 5000);
})();
"""
