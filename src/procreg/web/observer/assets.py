"""The observer's page, script and stylesheet, served from strings (no build step, no
CDN). The script inserts every value with ``textContent``, never as HTML, and talks
only to the JSON routes next to the page (relative URLs, so it works wherever the
observer is mounted)."""

from __future__ import annotations

from typing import Final

from .script import SCRIPT

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
  <span id="scope" class="badge"></span>
  <span id="mode" class="badge"></span>
  <span id="status" class="muted">connecting…</span>
</header>
<main>
<section id="nodes-section">
  <h2>Nodes <span id="nodes-count" class="muted"></span></h2>
  <div class="scroll">
  <table id="nodes">
    <thead><tr><th>node</th><th>state</th><th class="num">processes</th>
      <th class="num">spawned</th><th class="num">exited</th><th class="num">crashed</th>
      <th class="num" title="children restarted by supervisors">restarts</th>
      <th class="num" title="messages handled">messages</th>
      <th class="num" title="calls handled by servers">calls</th>
      <th class="num" title="messages refused by full mailboxes">dropped</th>
      <th class="num" title="processes ended with reason overload">overloaded</th>
      <th class="num">run queue</th><th class="num">uptime</th>
      <th class="num">spawns/s</th><th class="num">messages/s</th>
      <th class="num" title="frames sent / received / dropped">frames</th>
      <th class="num" title="round trip of the last lease renewal">lease renewal</th>
      <th class="num" title="times the node fenced itself">fences</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
  </div>
  <div class="charts">
    <figure>
      <figcaption>Messages handled per second, per node (last 60 s)</figcaption>
      <canvas id="chart-messages" width="520" height="160"
        aria-label="messages handled per second per node over the last minute"></canvas>
    </figure>
    <figure>
      <figcaption>Processes spawned per second, per node (last 60 s)</figcaption>
      <canvas id="chart-spawns" width="520" height="160"
        aria-label="processes spawned per second per node over the last minute"></canvas>
    </figure>
  </div>
  <p id="legend" class="legend"></p>
</section>
<section id="events-section">
  <h2>Cluster events</h2>
  <table id="events">
    <thead><tr><th>time</th><th>event</th><th>node</th><th>detail</th>
      <th>seen by</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
<section id="scoped-section">
  <h2>Cluster-scoped processes <span id="scoped-count" class="muted"></span></h2>
  <p id="scoped-info" class="muted"></p>
  <div class="scroll">
  <table id="scoped">
    <thead><tr><th>key</th><th>pid</th><th>node</th>
      <th title="where the key would be placed now (rendezvous hashing over the live nodes)">home
        node</th><th>behaviour</th>
      <th title="handoffs on graceful stops and restarts after failures, newest first">moves
        (newest first)</th></tr></thead>
    <tbody></tbody>
  </table>
  </div>
  <p class="pager">
    <button type="button" id="scoped-prev">&lsaquo; previous</button>
    <button type="button" id="scoped-next">next &rsaquo;</button>
  </p>
</section>
<section id="registry-section" class="columns">
  <div>
    <h2>Tables <span id="tables-scope" class="muted">(all nodes)</span></h2>
    <table id="tables"><thead><tr><th>table</th><th class="num">entries</th>
      <th>per node</th></tr></thead><tbody></tbody></table>
  </div>
  <div>
    <h2>Pools and groups <span id="groups-total" class="muted"></span></h2>
    <table id="pools"><thead><tr><th>group</th><th class="num">members</th></tr></thead>
      <tbody></tbody></table>
  </div>
</section>
<section id="processes-section">
  <h2>Processes on <select id="node-select" aria-label="node whose processes are shown">
    </select></h2>
  <form id="search-form" autocomplete="off">
    <input id="search" type="search" placeholder="search pid, behaviour, kind, key or group"
      aria-label="search processes">
    <button type="submit">search</button>
    <button type="button" id="clear">clear</button>
  </form>
  <p id="proc-info" class="muted"></p>
  <div class="scroll">
  <table id="processes">
    <thead><tr><th>pid</th><th>behaviour</th><th>kind</th><th>keys</th><th>groups</th>
      <th class="num" title="messages waiting (/ its bound)">mailbox</th>
      <th class="num" title="most messages that waited at once">peak</th>
      <th class="num" title="messages its full mailbox refused">dropped</th>
      <th class="num">handled</th><th class="num">age</th><th>status</th><th></th>
    </tr></thead>
    <tbody></tbody>
  </table>
  </div>
  <p class="pager">
    <button type="button" id="prev">&lsaquo; previous</button>
    <button type="button" id="next">next &rsaquo;</button>
  </p>
  <section id="detail" hidden>
    <h3>Process <span id="detail-pid"></span>
      <button type="button" id="detail-close">close</button></h3>
    <dl id="process-detail"></dl>
  </section>
</section>
<section id="tree-section">
  <h2>Supervision trees on <span id="tree-node"></span>
    <button type="button" id="tree-refresh">refresh</button></h2>
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
  background: #243447; color: #fff; flex-wrap: wrap; }
header h1 { font-size: 1.2em; margin: 0; }
.badge { background: #3b4f66; border-radius: .3em; padding: 0 .5em; font-size: .9em; }
main { padding: 0 1em 2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
h3 { font-size: 1em; margin: .8em 0 .3em; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.muted { color: #777; }
header .muted { color: #cbd5e1; }
.columns { display: flex; gap: 2em; flex-wrap: wrap; }
.charts { display: flex; gap: 1.5em; flex-wrap: wrap; margin-top: .6em; }
figure { margin: 0; }
figcaption { font-size: .9em; color: #444; margin-bottom: .2em; }
canvas { display: block; background: #fff; border: 1px solid #ddd; }
.legend span { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .3em;
  vertical-align: -.1em; border-radius: .15em; }
.tree, .tree ul { list-style: none; padding-left: 1.2em; }
.tree li { margin: .15em 0; }
.tree .sup { font-weight: 600; }
tr.down td { color: #b91c1c; }
tr.self td:first-child { font-weight: 600; }
tr.event-down td, tr.event-fence td { color: #b91c1c; }
tr.event-up td, tr.event-join td, tr.event-rejoin td { color: #166534; }
tr.event-handoff td, tr.event-takeover td, tr.event-restart td { color: #1d4ed8; }
#scoped td { max-width: 28em; overflow-wrap: anywhere; }
#scoped tr.away td:nth-child(4) { color: #b45309; }
ul.moves { margin: 0; padding-left: 1.1em; }
ul.moves li.move-failover { color: #b91c1c; }
#processes tbody tr { cursor: pointer; }
#processes tbody tr:hover { background: #f1f5f9; }
button.kill { color: #b91c1c; }
#processes td { max-width: 28em; overflow-wrap: anywhere; }
#detail dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em;
  background: #fff; border: 1px solid #ddd; padding: .5em 1em; margin: 0; }
#detail dt { color: #555; }
#detail dd { margin: 0; overflow-wrap: anywhere; }
"""
