"""The part of the observer page's script (see `script`) that draws the
"Cluster-scoped processes" section from ``GET /api/scoped``: a page of the cluster's
cluster-scoped processes, each with its node, its key's home node, its behaviour and
the moves of its key that the observing node made or took. It runs inside the main
script's closure (its helpers ``$``, ``cell``, ``tr``, ``count``, ``behaviour`` and
``getJSON``) and inserts every value with ``textContent``, never as HTML."""

from __future__ import annotations

from typing import Final

__all__ = ["SCOPED_SCRIPT"]

SCOPED_SCRIPT: Final = r"""
  // -- cluster-scoped processes: a page of the cluster's, with the moves this node saw
  const scopedState = { offset: 0, limit: 25, total: 0 };
  const MOVES = { takeover: "handoff", failover: "failover restart" };
  function moveText(m) {
    return (MOVES[m.kind] || m.kind) + " at " + new Date(m.at * 1000).toLocaleTimeString() +
      ": " + (m.from || "?") + " \u2192 " + (m.to || "?");
  }
  function movesCell(moves) {
    if (!moves.length) return cell("none seen by this node", "muted");
    const list = document.createElement("ul");
    list.className = "moves";
    for (const m of moves) {
      const li = document.createElement("li");
      li.className = "move-" + m.kind;
      li.textContent = moveText(m);
      list.appendChild(li);
    }
    return cell(list);
  }
  function scopedRow(p) {
    const home = p.home === null ? "no live node" : p.home;
    const away = p.home !== null && p.home !== p.node;
    const row = tr([
      cell(p.key), cell(p.pid), cell(p.node + (p.local ? " (this node)" : "")),
      cell(home + (away ? " (runs away from home)" : "")),
      cell(p.behaviour === null ? "?" : behaviour(p.behaviour)), movesCell(p.moves),
    ], away ? "away" : "");
    row.dataset.key = p.key;
    return row;
  }
  async function scopedProcesses() {
    let data;
    try {
      data = await getJSON("api/scoped?offset=" + scopedState.offset + "&limit=" +
                           scopedState.limit);
    } catch (err) {
      $("scoped-info").textContent = "could not read the cluster-scoped processes: " +
        err.message;
      return;
    }
    const body = $("scoped").tBodies[0];
    $("scoped-prev").disabled = data.offset === 0;
    if (!data.clustered) {
      $("scoped-count").textContent = "";
      $("scoped-info").textContent = "none: this is an embedded node, not in a cluster " +
        "(processes become cluster-scoped with scope=\"cluster\" on a node started " +
        "with cluster=...)";
      body.replaceChildren();
      $("scoped-next").disabled = true;
      return;
    }
    scopedState.total = data.total;
    if (data.offset > 0 && data.offset >= data.total) {  // the page emptied: go back
      scopedState.offset = Math.max(0, data.total - 1) - (Math.max(0, data.total - 1) %
                                                         scopedState.limit);
    }
    const last = data.offset + data.processes.length;
    $("scoped-count").textContent = "(" + count(data.total) + ")";
    let info = data.total ? data.offset + 1 + "\u2013" + last + " of " + count(data.total) +
      ", sessions last; moves are those " + data.self + " made or took (" +
      count(data.takeovers) + " taken over, " + count(data.handed_off) + " handed off, " +
      count(data.failovers) + " restarted after a failure)" :
      "no cluster-scoped process is running in this cluster";
    if (data.truncated) info += "; only " + count(data.read) + " of the records were read " +
      "and paged";
    $("scoped-info").textContent = info;
    body.replaceChildren(...data.processes.map(scopedRow));
    $("scoped-next").disabled = last >= data.total;
  }
  $("scoped-prev").addEventListener("click", () => {
    scopedState.offset = Math.max(0, scopedState.offset - scopedState.limit);
    scopedProcesses();
  });
  $("scoped-next").addEventListener("click", () => {
    scopedState.offset += scopedState.limit;
    scopedProcesses();
  });
"""
