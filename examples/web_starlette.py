"""procreg in a Starlette app: a session counter and a comet pool, in a dozen lines.

    python examples/web_starlette.py      # then open http://127.0.0.1:8000/
    (or: uvicorn examples.web_starlette:app)

Every visit bumps a counter kept in the browser's session process and is announced to
every page open on /ws (a comet pool); the observer is at /observer/.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

import procreg.web

PAGE = """<!doctype html><title>visits</title><pre id=log></pre><script>
fetch("/hit").then(r => r.json()).then(d => log.textContent += "you: " + d.visits + "\\n");
const ws = new WebSocket("ws://" + location.host + "/ws");
ws.onmessage = e => { log.textContent += "someone: " + JSON.parse(e.data).visits + "\\n"; };
</script>"""


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def hit(request: Request) -> JSONResponse:
    visits = await procreg.web.session(request).incr("visits")  # the session process
    await procreg.web.publish("visits", {"visits": visits})  # every open page hears it
    return JSONResponse({"visits": visits})


app = Starlette(
    routes=[Route("/", home), Route("/hit", hit), procreg.web.comet_route("/ws", pool="visits")]
)
procreg.web.install(app, secret="change me: a long random secret", observer=True)

if __name__ == "__main__":
    procreg.web.serve(app, host="127.0.0.1", port=8000)
