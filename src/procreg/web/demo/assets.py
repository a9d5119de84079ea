"""The demo's page, script and stylesheet, served from strings by the app itself (no
build step, no CDN). The script puts every text it receives into the page with
``textContent`` — never ``innerHTML`` — so nothing a user types becomes markup."""

from __future__ import annotations

from typing import Final

__all__ = ["INDEX_HTML", "SCRIPT", "STYLE"]

INDEX_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>procreg demo</title>
<link rel="stylesheet" href="/static/demo.css">
</head>
<body>
<header>
  <h1>procreg demo</h1>
  <span class="clock">server time <strong id="clock">--:--:--</strong></span>
  <span>visits this session: <strong id="visits">…</strong></span>
  <a href="/observer/">observer</a>
</header>
<main>
  <section class="settings">
    <form id="nick-form" autocomplete="off">
      <label for="nick">nickname</label>
      <input id="nick" name="nick" maxlength="32" placeholder="anonymous">
      <button type="submit">save</button>
      <span id="nick-status" class="muted"></span>
    </form>
    <form id="room-form" autocomplete="off">
      <label for="room">room</label>
      <input id="room" name="room" maxlength="40" value="lobby" list="room-list">
      <datalist id="room-list"></datalist>
      <button type="submit">join</button>
      <span id="room-status" class="muted"></span>
    </form>
  </section>
  <section class="chat">
    <h2>Room <span id="room-name">lobby</span></h2>
    <ul id="messages" aria-live="polite"></ul>
    <form id="say-form" autocomplete="off">
      <input id="say" maxlength="500" placeholder="say something" aria-label="message">
      <button type="submit">send</button>
    </form>
  </section>
</main>
<script src="/static/demo.js"></script>
</body>
</html>
"""

STYLE: Final = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1f2937; background: #f8fafc; }
header { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: baseline;
  padding: .7em 1em; background: #1e3a5f; color: #fff; }
header h1 { margin: 0; font-size: 1.25em; }
header a { color: #bfdbfe; margin-left: auto; }
main { max-width: 52em; margin: 0 auto; padding: 1em; }
.settings { display: flex; flex-wrap: wrap; gap: 1.5em; }
form { display: flex; gap: .5em; align-items: center; }
input { padding: .3em .5em; border: 1px solid #cbd5e1; border-radius: 4px; }
#say { flex: 1; }
#say-form { margin-top: .6em; }
#messages { list-style: none; padding: .5em; margin: 0; height: 22em; overflow-y: auto;
  background: #fff; border: 1px solid #e2e8f0; border-radius: 6px; }
#messages li { padding: .15em 0; overflow-wrap: anywhere; }
.time { color: #94a3b8; font-size: .85em; margin-right: .5em;
  font-variant-numeric: tabular-nums; }
.nick { font-weight: 600; margin-right: .4em; }
.system { color: #64748b; font-style: italic; }
.muted { color: #64748b; }
"""

SCRIPT: Final = r"""
"use strict";
(function () {
  let socket = null;
  let room = "lobby";
  let retry = null;

  function $(id) { return document.getElementById(id); }

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.status);
    return data;
  }

  function addLine(line, cls) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    if (line.time) {
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = line.time;
      li.appendChild(time);
    }
    if (line.nick) {
      const nick = document.createElement("span");
      nick.className = "nick";
      nick.textContent = line.nick + ":";
      li.appendChild(nick);
    }
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    li.appendChild(text);
    const list = $("messages");
    list.appendChild(li);
    while (list.children.length > 200) list.removeChild(list.firstChild);
    list.scrollTop = list.scrollHeight;
  }

  function onMessage(event) {
    let msg;
    try { msg = JSON.parse(event.data); } catch (err) { return; }
    if (msg.type === "clock") {
      $("clock").textContent = msg.time;
    } else if (msg.type === "history") {
      $("messages").replaceChildren();
      for (const line of msg.lines) addLine(line);
      addLine({ text: "you joined " + msg.room }, "system");
    } else if (msg.type === "chat") {
      addLine(msg);
    } else if (msg.type === "error") {
      addLine({ text: msg.error }, "system");
    }
  }

  function connect(name) {
    room = name;
    $("room-name").textContent = name;
    if (retry !== null) { clearTimeout(retry); retry = null; }
    if (socket !== null) { socket.onclose = null; socket.close(); }
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/ws/" + encodeURIComponent(name));
    socket = ws;
    $("room-status").textContent = "connecting…";
    ws.onopen = () => { $("room-status").textContent = "connected"; };
    ws.onmessage = onMessage;
    ws.onclose = (event) => {
      if (socket !== ws) return;
      $("room-status").textContent = "disconnected (" + event.code + "), retrying…";
      retry = setTimeout(() => connect(room), 1000);
    };
  }

  async function loadRooms() {
    try {
      const data = await (await fetch("/api/rooms")).json();
      $("room-list").replaceChildren(...data.rooms.map((r) => {
        const option = document.createElement("option");
        option.value = r.room;
        option.textContent = r.listeners + " listening";
        return option;
      }));
    } catch (err) { /* the picker is a convenience */ }
  }

  $("nick-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const data = await postJSON("/api/nick", { nick: $("nick").value });
      $("nick").value = data.nick;
      $("nick-status").textContent = "saved";
    } catch (err) {
      $("nick-status").textContent = "not saved: " + err.message;
    }
  });

  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("room").value.trim() || "lobby";
    connect(name);
    loadRooms();
  });

  $("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("say").value;
    if (!text.trim() || socket === null || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ type: "say", text: text }));
    $("say").value = "";
  });

  postJSON("/api/visit").then((data) => {
    $("visits").textContent = String(data.visits);
    if (data.nick) $("nick").value = data.nick;
  }).catch(() => { $("visits").textContent = "?"; });
  connect(room);
  loadRooms();
  setInterval(loadRooms, 10000);
})();
"""
