"""One procreg cluster node as an OS process, driven by JSON lines (a test helper).

    python node_runner.py --name n1 --cluster redis://127.0.0.1:6379/0 \\
        --secret s3cret --lease 1.0 [--trace DIR]

The node runs ``procreg.run(main, name=..., cluster=..., secret=..., lease=...)``.
``main`` prints ``{"event": "ready", "name": ..., "creation": ...}`` and then reads
commands, one JSON object a line, from stdin: ``{"id": 7, "cmd": "call", "pid": [...],
"request": [...]}``. Each command runs in a process of its own, so a slow one (a
call to a node that is about to die) does not hold up the others, and each gets one
line back: ``{"id": 7, "ok": true, "result": ..., "elapsed": s, "t": time}`` or
``{"id": 7, "ok": false, "error": "NoProcess", "message": ..., "elapsed": s}``.
Pids cross as ``[node, creation, serial]``. End of stdin or ``quit`` stops the node.

If the node cannot start (the cluster store is unreachable) the one line is
``{"event": "error", "error": "ClusterUnavailable", "message": ..., "elapsed": s}``
and the exit status is 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import threading
import time
from typing import Any

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj, default=repr)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _setup_path() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path.pop(0)  # this directory holds no top-level modules
    tests_dir = os.path.dirname(here)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)


def _direct_stats(direct: Any) -> Any:
    """Counters and sessions of the direct connections (None without ``listen=``)."""
    if direct is None:
        return None
    return {
        **direct.counts,
        "up": sorted(n for n, link in direct.out.items() if link.up),
        "inbound": sorted(n for n, link in direct.inbound.items() if link.marked),
        "address": list(direct.address or ()),
    }


class Runner:
    """The command handlers; each runs inside a process of its own."""

    def __init__(self) -> None:
        import procreg
        from cluster import servers

        self.procreg = procreg
        self.servers = servers
        self.node = procreg.current_node()
        self.records: dict[str, dict[str, Any]] = {}
        self.key_records: dict[str, dict[str, Any]] = {}
        self.node_events: list[dict[str, Any]] = []

    # -- helpers ------------------------------------------------------------------
    def pid(self, value: Any) -> Any:
        return self.procreg.Pid(value[0], int(value[1]), int(value[2]))

    def factory(self, name: str) -> Any:
        return self.servers.FACTORIES[name]

    async def dispatch(self, cmd: dict[str, Any]) -> None:
        ident = cmd.get("id")
        start = time.monotonic()
        try:
            handler = getattr(self, "cmd_" + cmd["cmd"])
            result = await handler(**{k: v for k, v in cmd.items() if k not in ("id", "cmd")})
        except Exception as exc:
            answer: dict[str, Any] = {
                "id": ident,
                "ok": False,
                "error": type(exc).__name__,
                "message": str(exc),
                "elapsed": time.monotonic() - start,
                "t": time.time(),
            }
            holder = getattr(exc, "pid", None)
            if holder is not None:
                answer["holder"] = self.servers.plain(holder)
            emit(answer)
            return
        emit(
            {
                "id": ident,
                "ok": True,
                "result": self.servers.plain(result),
                "elapsed": time.monotonic() - start,
                "t": time.time(),
            }
        )

    # -- node ----------------------------------------------------------------------
    async def cmd_ping(self) -> Any:
        return {"name": self.node.name, "creation": self.node.creation, "os_pid": os.getpid()}

    async def cmd_nodes(self) -> Any:
        return self.procreg.nodes()

    async def cmd_node_events(self) -> Any:
        return list(self.node_events)

    async def cmd_stats(self) -> Any:
        cluster = self.node._cluster
        transport = cluster.transport
        return {
            "name": self.node.name,
            "creation": self.node.creation,
            "dropped": dict(transport.dropped),
            "sent_frames": transport.sent_frames,
            "received_frames": transport.received_frames,
            "fenced": cluster.fenced,
            "fencing": cluster.fencing,
            "failovers": cluster.failovers,
            "silent": transport.silent,
            "heartbeats": transport.heartbeats,
            "unreplicated": cluster.backend.unreplicated + cluster.membership.unreplicated,
            "recoveries": cluster.recoveries,
            "conflicts": cluster.backend.conflicts,
            "renewals": cluster.membership.renewals,
            "store_up": cluster.store.up,
            "store_failures": cluster.store.failures,
            "invalidations": cluster.counters.invalidations,
            "store_lookups": cluster.counters.store_lookups,
            "processes": self.node.process_count(),
            "live": dict(cluster.membership.live),
            "direct": _direct_stats(cluster.direct),
        }

    async def cmd_info(self, pid: list[Any]) -> Any:
        """`Node.info` of a local process (None if it is gone)."""
        info = self.node.info(self.pid(pid))
        return info.as_dict() if info is not None else None

    async def cmd_node_stats(self) -> Any:
        """`Node.stats` (the runtime's counters)."""
        return self.node.stats().as_dict()

    async def cmd_local_work(self, n: int = 50) -> Any:
        """Spawn, call, cast and look up a local key: nothing here needs the store."""
        procreg = self.procreg
        pid = self.servers.Echo.start("local")
        total = 0
        for i in range(n):
            total += await procreg.call(pid, ["echo", i], timeout=2.0)
        procreg.cast(pid, "c")
        log = await procreg.call(pid, ["log"], timeout=2.0)
        co = procreg.spawn(self.servers.co_echo)
        echoed = await procreg.call(co, ["echo", "co"], timeout=2.0)
        procreg.exit(co, "kill")
        procreg.exit(pid, "kill")
        return {"sum": total, "log": log, "co": echoed}

    # -- cluster-scoped processes -------------------------------------------------------
    async def cmd_pi_start(
        self,
        name: Any,
        module: str = "Job",
        table: str = "jobs",
        scope: str = "cluster",
        state: Any = None,
        at: float | None = None,
    ) -> Any:
        """`pi.start` under the root supervisor (at wall-clock time `at`, if given)."""
        from procreg import pi

        if at is not None:
            await asyncio.sleep(max(0.0, at - time.time()))
        mod = getattr(self.servers, module)
        result = await pi.start(pi.Pi(name, table, "root", mod, state=state, scope=scope))
        if isinstance(result, pi.Error):
            return {"error": self.servers.plain(result.code)}
        return {"pid": result[0]}

    async def cmd_pi_send(self, name: Any, msg: Any, table: str = "jobs") -> Any:
        from procreg import pi

        return await pi.send(table, name, msg)

    async def cmd_scoped_gos(
        self,
        keys: list[Any],
        factory: str = "Keeper",
        table: str = "keep",
        placement: str = "hash",
        at: float | None = None,
    ) -> Any:
        """get_or_spawn(key, factory, key, scope="cluster") of every key at once."""
        procreg = self.procreg
        fac = self.factory(factory)
        if at is not None:
            await asyncio.sleep(max(0.0, at - time.time()))
        return await asyncio.gather(
            *(
                procreg.get_or_spawn(k, fac, k, table=table, placement=placement, scope="cluster")
                for k in keys
            )
        )

    async def cmd_key_call_many(
        self, keys: list[Any], request: Any, table: str = "keep", timeout: float = 5.0
    ) -> Any:
        """For each key: whereis then call; the reply, or the error's type and text."""
        procreg = self.procreg

        async def one(k: Any) -> Any:
            try:
                pid = await procreg.whereis(k, table)
                if pid is None:
                    return "missing"
                return await procreg.call(pid, request, timeout=timeout)
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        return await asyncio.gather(*(one(k) for k in keys))

    async def cmd_cast_keys_for(
        self, keys: list[Any], seconds: float, table: str = "keep", tag: Any = "m"
    ) -> Any:
        """For `seconds`: round after round, whereis each key and cast it
        ``["add", [tag, n]]`` (n counts per key); ``{"sent": {key: [n...]},
        "missing": lookups that found no process}``."""
        procreg = self.procreg
        sent: dict[str, list[int]] = {str(k): [] for k in keys}
        missing = 0
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            for k in keys:
                pid = await procreg.whereis(k, table)
                if pid is None:
                    missing += 1
                    continue
                procreg.cast(pid, ["add", [tag, n]])
                sent[str(k)].append(n)
            n += 1
            await asyncio.sleep(0.002)
        return {"sent": sent, "missing": missing}

    async def cmd_session_incr(self, sids: list[str], by: int = 1, scope: str = "cluster") -> Any:
        """``Session.incr("visits", by)`` of every session id (procreg.web's sessions,
        without HTTP): the new values."""
        from procreg.web.session import Session

        handles = [Session(sid, self.node, 600.0, False, scope) for sid in sids]
        return await asyncio.gather(*(h.incr("visits", by) for h in handles))

    async def cmd_demo_clock(self) -> Any:
        """Start the demo's clock (once per cluster), then ask its tick count."""
        from procreg import pi
        from procreg.web.demo.clock import clock_pi

        started = await pi.start(clock_pi(interval=0.05))
        if isinstance(started, pi.Error) and started.code[0] != "already_started":
            raise RuntimeError(started.code)
        found = await pi.whereis("web", "clock")
        return {"ticks": await pi.send("web", "clock", "ticks"), "node": found[0]}

    async def cmd_observer_scoped(self) -> Any:
        """The observer's ``/api/scoped`` body."""
        from procreg.web.observer.scoped import scoped_view

        return scoped_view(self.node)

    async def cmd_cluster_events(self) -> Any:
        """The kinds of this node's recent cluster events, oldest first."""
        return [e["kind"] for e in self.node._cluster.counters.events]

    async def cmd_cluster_event_details(self, kind: str) -> Any:
        """The details of this node's recent cluster events of `kind`, oldest first."""
        return [e["detail"] for e in self.node._cluster.counters.events if e["kind"] == kind]

    async def cmd_takeover_request(
        self, keys: list[Any], source: str, old: list[Any], table: str = "keep"
    ) -> Any:
        """Serve a takeover request for `keys` as if node `source` were handing off
        its instances `old` (what `Scoped.serve` answers: a pid or None per key)."""
        from procreg.cluster.codec import canon, pid_str

        fields = [canon((table, k)) for k in keys]
        olds = [pid_str(self.pid(p)) for p in old]
        pids, _ = await self.node._cluster.scoped.serve(("takeover", source, fields, olds))
        return pids

    async def cmd_scoped_stats(self) -> Any:
        s = self.node._cluster.scoped
        return {
            "local": len(s.local),
            "failovers": s.failovers,
            "takeovers": s.takeovers,
            "handed_off": s.handed_off,
            "history": [e.as_dict() for e in s.history],
        }

    # -- registry ------------------------------------------------------------------------
    async def cmd_gos(
        self,
        key: Any,
        factory: str = "Echo",
        args: list[Any] | None = None,
        table: str = "default",
        placement: str = "local",
    ) -> Any:
        pid, started = await self.procreg.spawn_unique(
            key, self.factory(factory), *(args or []), table=table, placement=placement
        )
        return {"pid": pid, "started": started}

    async def cmd_gos_many(
        self,
        keys: list[Any],
        factory: str = "Echo",
        table: str = "default",
        placement: str = "local",
        key_arg: bool = False,
        stop_frac: float = 0.0,
        chunk: int = 0,
        pace: float = 0.002,
    ) -> Any:
        """get_or_spawn of every key at once (or `chunk` keys every `pace` s); `key_arg`
        passes the key to the factory; then casts ``["stop"]`` to a random `stop_frac`
        of the pids (churn)."""
        procreg = self.procreg
        fac = self.factory(factory)

        async def one(key: Any) -> Any:
            args = (key,) if key_arg else ()
            return await procreg.get_or_spawn(key, fac, *args, table=table, placement=placement)

        tasks = []
        for i, key in enumerate(keys):
            if chunk and i and i % chunk == 0:
                await asyncio.sleep(pace)  # the next chunk goes out in a later loop turn
            tasks.append(asyncio.ensure_future(one(key)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors: dict[str, int] = {}
        samples: dict[str, str] = {}
        pids: list[Any] = []
        for r in results:
            if isinstance(r, BaseException):
                errors[type(r).__name__] = errors.get(type(r).__name__, 0) + 1
                samples.setdefault(type(r).__name__, str(r)[:300])
                pids.append(None)
            else:
                pids.append(r)
        for pid in pids:
            if pid is not None and stop_frac and random.random() < stop_frac:
                try:
                    procreg.cast(pid, ["stop"])
                except Exception:
                    pass
        return {"pids": pids, "errors": errors, "samples": samples}

    async def cmd_entries(self, table: str = "default") -> Any:
        """This node's local view of `table` (its own registrations)."""
        return sorted([key, pid] for key, pid in self.procreg.entries(table))

    async def cmd_whereis(self, key: Any, table: str = "default") -> Any:
        return await self.procreg.whereis(key, table)

    async def cmd_whereis_many(self, keys: list[Any], table: str = "default") -> Any:
        out = []
        for key in keys:
            try:
                out.append(await self.procreg.whereis(key, table))
            except Exception as exc:
                out.append(f"error: {type(exc).__name__}")
        return out

    async def cmd_register(self, key: Any, table: str = "default") -> Any:
        """Start an `Echo` and register it under `key` (it ends if that fails)."""
        pid = self.servers.Echo.start(key)
        try:
            await self.procreg.register(key, pid, table)
        except BaseException:
            self.procreg.exit(pid, "kill")
            raise
        return pid

    async def cmd_unregister(
        self, key: Any, table: str = "default", pid: list[Any] | None = None
    ) -> Any:
        """Unregister `key`, expecting `pid` (default: whoever holds it now)."""
        holder = self.pid(pid) if pid is not None else await self.procreg.whereis(key, table)
        if holder is None:
            return False
        return await self.procreg.unregister(key, table, pid=holder)

    async def cmd_join(self, group: Any) -> Any:
        pid = self.servers.Echo.start(("member", group))
        await self.procreg.join(group, pid)
        return pid

    async def cmd_leave(self, group: Any, pid: list[Any]) -> Any:
        return await self.procreg.leave(group, self.pid(pid))

    async def cmd_members(self, group: Any) -> Any:
        return await self.procreg.members(group)

    async def cmd_publish(self, group: Any, msg: Any) -> Any:
        return await self.procreg.publish(group, msg)

    async def cmd_group_view(self, group: Any) -> Any:
        """This node's view of `group` (node -> sorted members; None: no view) and how
        many views it has loaded from the store."""
        from procreg.cluster.codec import canon

        views = self.node._cluster.backend.groups_.views
        view = views.views.get(canon(group))
        nodes = None if view is None else {n: sorted(p) for n, p in view.items()}
        return {"view": nodes, "loads": views.loads}

    async def cmd_sweep_views(self) -> Any:
        """Run one sweep of idle group views now and wait for its store writes; the
        groups this node still has views of."""
        views = self.node._cluster.backend.groups_.views
        views.sweep()
        if views._unwatching is not None:
            await views._unwatching
        return sorted(views.views)

    async def cmd_join_pid(self, group: Any, pid: list[Any]) -> Any:
        """Join a given local process (not a new Echo) to `group`."""
        return await self.procreg.join(group, self.pid(pid))

    async def cmd_publish_missed(self, group: Any, msg: Any) -> Any:
        """`publish`, with what its `Published` says: ``[reached, missed]``."""
        result = await self.procreg.publish(group, msg)
        return [int(result), result.missed]

    # -- processes ------------------------------------------------------------------------
    async def cmd_spawn(self, factory: str = "Echo") -> Any:
        fac = self.factory(factory)
        if isinstance(fac, type):
            return fac.start()
        return self.procreg.spawn(fac)

    async def cmd_call(self, pid: list[Any], request: Any, timeout: float = 5.0) -> Any:
        return await self.procreg.call(self.pid(pid), request, timeout=timeout)

    async def cmd_cast(self, pid: list[Any], msg: Any) -> Any:
        self.procreg.cast(self.pid(pid), msg)

    async def cmd_send(self, pid: list[Any], msg: Any) -> Any:
        self.procreg.send(self.pid(pid), msg)

    async def cmd_send_many(self, pid: list[Any], n: int, how: str = "cast") -> Any:
        target = self.pid(pid)
        fn = self.procreg.cast if how == "cast" else self.procreg.send
        for i in range(n):
            fn(target, ["seq", i])
            if i % 100 == 99:
                await asyncio.sleep(0)  # spread over several loop turns (frames)
        return n

    async def cmd_cast_paced(
        self, pid: list[Any], n: int, every: int = 10, pace: float = 0.005
    ) -> Any:
        """Cast ``["seq", i]`` for i in range(n) to `pid`, `every` of them per `pace`
        seconds (a stream that spans seconds)."""
        target = self.pid(pid)
        for i in range(n):
            self.procreg.cast(target, ["seq", i])
            if i % every == every - 1:
                await asyncio.sleep(pace)
        return n

    async def cmd_bad_send(self, pid: list[Any]) -> Any:
        """send / cast / call with an unpicklable message: the error each raises."""
        procreg = self.procreg
        target = self.pid(pid)
        out: dict[str, Any] = {}
        for how in ("send", "cast", "call"):
            message = lambda: None  # noqa: E731 - a lambda cannot be pickled
            start = time.monotonic()
            try:
                if how == "call":
                    await procreg.call(target, message, timeout=5.0)
                else:
                    getattr(procreg, how)(target, message)
            except Exception as exc:
                out[how] = {"error": type(exc).__name__, "elapsed": time.monotonic() - start}
            else:
                out[how] = {"error": None, "elapsed": time.monotonic() - start}
        return out

    async def cmd_cast_many(
        self, pids: list[Any], msg: Any, chunk: int = 0, pace: float = 0.001
    ) -> Any:
        """Cast `msg` to every pid (`chunk` of them every `pace` seconds)."""
        for i, pid in enumerate(pids):
            if chunk and i and i % chunk == 0:
                await asyncio.sleep(pace)
            self.procreg.cast(self.pid(pid), msg)
        return len(pids)

    async def cmd_flood(self, pid: list[Any], n: int, size: int) -> Any:
        """Cast `n` messages of `size` bytes to `pid`, 20 a loop turn."""
        target = self.pid(pid)
        blob = b"x" * size
        for i in range(n):
            if i and i % 20 == 0:
                await asyncio.sleep(0)
            self.procreg.cast(target, ["blob", i, blob])
        return n

    async def cmd_exit(self, pid: list[Any], reason: Any) -> Any:
        self.procreg.exit(self.pid(pid), reason)

    async def cmd_alive(self, pid: list[Any]) -> Any:
        return self.procreg.is_alive(self.pid(pid))

    async def cmd_alive_many(self, pids: list[Any]) -> Any:
        return [self.procreg.is_alive(self.pid(p)) for p in pids]

    async def cmd_watch(
        self, target: list[Any], mode: str = "monitor", trap: bool = False, sync: bool = True
    ) -> Any:
        """A process that monitors or links `target` and records every message it
        gets; a local observer records how the watcher itself ends."""
        procreg = self.procreg
        plain = self.servers.plain
        pid = self.pid(target)
        rec: dict[str, Any] = {"messages": [], "ended": None, "armed": False}

        async def watcher() -> None:
            if mode == "monitor":
                procreg.monitor(pid)
            else:
                procreg.link(pid)
            rec["armed"] = True
            while True:
                msg = await procreg.receive()
                rec["messages"].append({"t": time.time(), "msg": plain(msg)})

        async def observer(watched: Any) -> None:
            ref = procreg.monitor(watched)
            while True:
                msg = await procreg.receive()
                if isinstance(msg, procreg.Down) and msg.ref == ref:
                    rec["ended"] = {"t": time.time(), "reason": plain(msg.reason)}
                    return

        wpid = procreg.spawn(watcher, trap_exits=trap)
        procreg.spawn(observer, wpid)
        self.records[repr(wpid)] = rec
        deadline = time.monotonic() + 2.0
        while not rec["armed"] and rec["ended"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        if sync and self.node.foreign(pid):
            try:  # same pair of nodes, so this arrives after the link / monitor
                await procreg.call(pid, ["echo", 0], timeout=2.0)
            except Exception:
                pass
        return wpid

    async def cmd_down_then_lookup(
        self, key: Any, timeout: float = 5.0, placement: str = "local"
    ) -> Any:
        """Monitor the holder of `key` (looked up now, so it is cached), ask its node
        to stop it, and the moment its Down arrives, look the key up again and
        get_or_spawn it (with `placement`): neither may answer with the dead pid."""
        procreg = self.procreg
        pid = await procreg.whereis(key)
        ref = procreg.monitor(pid)
        procreg.cast(pid, ["stop", "normal"])
        down = await procreg.receive(
            timeout=timeout, match=lambda m: isinstance(m, procreg.Down) and m.ref == ref
        )
        found = await procreg.whereis(key)
        got = await procreg.get_or_spawn(key, self.servers.Echo, placement=placement)
        return {"pid": pid, "reason": down.reason, "whereis": found, "get_or_spawn": got}

    async def cmd_terminate_registry(self, key: Any, how: str) -> Any:
        """Start an `servers.Unregisters` under `key`, end it `how` ("stop": it
        raises Stop; "exit": exit(pid, "shutdown")), and return what the registry
        calls in its async terminate gave."""
        servers = self.servers
        pid = await self.procreg.get_or_spawn(key, servers.Unregisters, key)
        ref = self.procreg.monitor(pid)
        if how == "stop":
            self.procreg.cast(pid, ["stop"])
        else:
            self.procreg.exit(pid, "shutdown")
        await self.procreg.receive(
            timeout=5, match=lambda m: isinstance(m, self.procreg.Down) and m.ref == ref
        )
        return {
            "results": servers.TERMINATED.pop(key, None),
            "after": await self.procreg.whereis(key),
        }

    async def cmd_send_undecodable(self, pid: list[Any], how: str) -> Any:
        """Send `pid` an instance of a class that exists only in this process's
        ``__main__`` (so the receiver cannot unpickle it), then a plain message in
        the same frame. ``how``: "call", "cast" or "send"."""
        procreg = self.procreg
        target = self.pid(pid)
        thing = self.servers.only_here()
        if how == "call":
            try:
                await procreg.call(target, ["echo", thing], timeout=5.0)
            except Exception as exc:
                return {"error": type(exc).__name__, "message": str(exc)}
            return {"error": None}
        if how == "cast":
            procreg.cast(target, ["odd", thing])
            procreg.cast(target, ["after", 1])  # same loop turn: same frame
        else:
            procreg.send(target, ["odd", thing])
            procreg.send(target, ["after", 1])
        return {"error": None}

    # -- break-10 (adversarial tests) ---------------------------------------------------
    async def cmd_hog(self, seconds: float, block: float = 0.015) -> Any:
        """Keep the event loop busy for `seconds`: callbacks that block it `block` s
        each (under FENCE_LEAD x lease), so that everything arriving meanwhile is
        handled in the same loop turn."""
        loop = asyncio.get_running_loop()
        end = time.monotonic() + seconds

        async def hog() -> None:
            while time.monotonic() < end:
                time.sleep(block)
                await asyncio.sleep(0)

        loop.create_task(hog())
        return True

    async def cmd_spin_call(
        self, key: Any, table: str = "default", timeout: float = 5.0, how: str = "call"
    ) -> Any:
        """Look `key` up until it is found, then at once call (or monitor) the pid;
        then look it up again. Returns what each step gave."""
        procreg = self.procreg
        deadline = time.monotonic() + timeout
        pid = None
        while pid is None and time.monotonic() < deadline:
            pid = await procreg.whereis(key, table)
        if pid is None:
            return {"found": None}
        out: dict[str, Any] = {"found": pid}
        if how == "call":
            try:
                out["call"] = await procreg.call(pid, ["echo", 1], timeout=2.0)
            except Exception as exc:
                out["call"] = f"{type(exc).__name__}: {exc}"
        else:
            ref = procreg.monitor(pid)
            try:
                msg = await procreg.receive(
                    timeout=0.5, match=lambda m: isinstance(m, procreg.Down) and m.ref == ref
                )
                out["down"] = self.servers.plain(msg.reason)
            except Exception as exc:
                out["down"] = f"none ({type(exc).__name__})"
        out["whereis_after"] = await procreg.whereis(key, table)
        return out

    async def cmd_timed_gos(
        self, key: Any, factory: str = "Echo", placement: str = "local", table: str = "default"
    ) -> Any:
        """One get_or_spawn, with its outcome and how long it took."""
        start = time.monotonic()
        try:
            pid, started = await self.procreg.spawn_unique(
                key, self.factory(factory), table=table, placement=placement
            )
            out: dict[str, Any] = {"pid": pid, "started": started}
        except Exception as exc:
            out = {"error": type(exc).__name__, "message": str(exc)[:200]}
        out["elapsed"] = time.monotonic() - start
        return out

    async def cmd_home_keys(self, node: str, n: int = 5, prefix: str = "h") -> Any:
        """`n` keys whose home node (placement="hash", over the live nodes) is `node`."""
        from procreg.cluster.backend import home_node

        live = self.node._cluster.live_nodes()
        out = []
        i = 0
        while len(out) < n:
            key = f"{prefix}{i}"
            if home_node(key, live) == node:
                out.append(key)
            i += 1
        return out

    # -- break-direct (adversarial tests of the direct path) ----------------------------
    async def cmd_link_stream(self, target: list[Any] | None, n: int, pace: float = 0.005) -> Any:
        """Spawn `n` processes that trap exits and link `target` (None: link
        nothing), one every `pace` seconds; each records the exit signals it gets
        (`cmd_link_stream_state`). Returns their pids."""
        procreg = self.procreg
        pid = self.pid(target) if target is not None else None
        pids = []

        async def linker(rec: list[Any]) -> None:
            if pid is not None:
                procreg.link(pid)
            while True:
                msg = await procreg.receive()
                rec.append(repr(getattr(msg, "reason", msg)))

        for _ in range(n):
            rec: list[Any] = []
            wpid = procreg.spawn(linker, rec, trap_exits=True)
            self.records[repr(wpid)] = {"messages": rec}
            pids.append(wpid)
            await asyncio.sleep(pace)
        return pids

    async def cmd_gap_watch(self, anchor: list[Any]) -> Any:
        """A process that traps exits, links `anchor` (again after each
        ``noconnection``: ``["relinked"]``) and logs, in arrival order, every message
        it gets and every exit signal (``["cut", reason]``); ``cmd_gap_log`` reads
        the log."""
        procreg = self.procreg
        target = self.pid(anchor)
        cluster = self.node._cluster
        log: list[Any] = []

        async def gapper() -> None:
            procreg.link(target)
            while True:
                msg = await procreg.receive()
                if isinstance(msg, procreg.Exit):
                    log.append(["cut", repr(msg.reason)])
                    if msg.reason == "noconnection" and cluster.is_live(target):
                        procreg.link(target)
                        log.append(["relinked"])
                    elif msg.reason == "noconnection":
                        log.append(["unlinked"])  # (its node is down: every gap is told)
                else:
                    log.append(msg)

        wpid = procreg.spawn(gapper, trap_exits=True)
        self.records[repr(wpid)] = {"messages": log}
        return wpid

    async def cmd_gap_log(self, pid: list[Any]) -> Any:
        return self.records[repr(self.pid(pid))]["messages"]

    async def cmd_link_stream_state(self, pids: list[Any]) -> Any:
        """For each `cmd_link_stream` process: the exit reasons it got so far."""
        return [self.records[repr(self.pid(p))]["messages"] for p in pids]

    async def cmd_watched(self, watcher: list[Any]) -> Any:
        return self.records[repr(self.pid(watcher))]

    # -- key monitors ------------------------------------------------------------------------
    async def cmd_monitor_key(self, key: Any, table: str = "default") -> Any:
        """A process that monitors `key` and records every `KeyEvent` it gets (as
        ``{"event", "pid", "key", "table", "t"}``); it answers calls: ``["monitor",
        key, table]`` (one more key), ``["demonitor"]`` (all its key monitors)."""
        procreg = self.procreg
        plain = self.servers.plain
        rec: dict[str, Any] = {"events": [], "refs": [], "error": None}
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watcher() -> None:
            try:
                rec["refs"].append(await procreg.monitor_key(key, table))
            except Exception as exc:
                rec["error"] = plain(exc)
                ready.set_result(None)
                return
            ready.set_result(None)
            while True:
                msg = await procreg.receive()
                if isinstance(msg, procreg.KeyEvent):
                    event = plain(msg)
                    event["t"] = time.time()
                    event["ref"] = rec["refs"].index(msg.ref)
                    rec["events"].append(event)
                elif isinstance(msg, procreg.Call):
                    op = msg.request[0]
                    if op == "monitor":
                        ref = await procreg.monitor_key(msg.request[1], msg.request[2])
                        rec["refs"].append(ref)
                        procreg.reply(msg.caller, len(rec["refs"]) - 1)
                    elif op == "demonitor":
                        done = [procreg.demonitor(ref) for ref in rec["refs"]]
                        procreg.reply(msg.caller, done)

        wpid = procreg.spawn(watcher)
        self.key_records[repr(wpid)] = rec
        await asyncio.wait_for(ready, 10)
        if rec["error"] is not None:
            raise RuntimeError(rec["error"])
        return wpid

    async def cmd_key_events(self, watcher: list[Any]) -> Any:
        """What the `cmd_monitor_key` watcher recorded: its events, oldest first."""
        return self.key_records[repr(self.pid(watcher))]["events"]

    async def cmd_watcher_call(self, watcher: list[Any], request: Any) -> Any:
        return await self.procreg.call(self.pid(watcher), request, timeout=5.0)

    async def cmd_keywatch(self) -> Any:
        """The node's key-monitor counters and the keys it watches in the store."""
        from procreg.cluster.keywatch import PENDING

        kw = self.node._cluster.backend.keywatch
        return {
            "events": kw.events,
            "delivered": kw.delivered,
            "rechecks": kw.rechecks,
            "watched": sorted(repr(entry) for entry in kw.known),
            "pending": sorted(repr(e) for e, v in kw.known.items() if v is PENDING),
        }


async def node_main(runner_box: list[Any]) -> None:
    import procreg

    runner = Runner()
    runner_box.append(runner)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()

    async def node_watcher() -> None:
        procreg.monitor_nodes()
        while True:
            event = await procreg.receive()
            if isinstance(event, procreg.NodeEvent):
                runner.node_events.append(
                    {"t": time.time(), "kind": event.kind, "node": event.node}
                )

    procreg.spawn(node_watcher)
    node = procreg.current_node()
    emit({"event": "ready", "name": node.name, "creation": node.creation, "os_pid": os.getpid()})

    async def command(cmd: dict[str, Any]) -> None:
        await runner.dispatch(cmd)

    while True:
        line = await queue.get()
        if line is None:
            return
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            emit({"id": cmd.get("id"), "ok": True, "result": None, "elapsed": 0.0})
            return
        procreg.spawn(command, cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--trace", default=None)
    opts = parser.parse_args()
    _setup_path()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {opts.name} %(name)s %(levelname)s %(message)s",
    )
    import procreg
    from cluster import servers

    if opts.trace:
        servers.set_trace(os.path.join(opts.trace, f"{opts.name}.jsonl"))
    start = time.monotonic()
    try:
        procreg.run(
            node_main,
            [],
            name=opts.name,
            cluster=opts.cluster,
            secret=opts.secret,
            lease=opts.lease,
        )
    except procreg.ClusterUnavailable as exc:
        emit(
            {
                "event": "error",
                "error": "ClusterUnavailable",
                "message": str(exc),
                "elapsed": time.monotonic() - start,
            }
        )
        sys.exit(3)
    emit({"event": "bye"})


if __name__ == "__main__":
    main()
