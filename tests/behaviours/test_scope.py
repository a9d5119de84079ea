"""The ``scope=`` option on an embedded node (no cluster: the node is the whole
cluster) and the checks made before anything starts; the cluster behaviour is in
tests/cluster/test_cluster_scoped.py."""

from __future__ import annotations

import asyncio

import pytest

import procreg
from procreg import pi
from procreg.supervisor import Supervisor


class Counter(procreg.Server):
    def init(self, start: int = 0) -> None:
        self.n = start
        self.moved = procreg.takeover()

    def handle_call(self, request):
        if request == "moved":
            return self.moved
        self.n += 1
        return self.n

    def handoff(self):
        return self.n


INITS: list[str] = []


class Job:
    @staticmethod
    def proc(msg, p):
        if msg is pi.INIT:
            INITS.append(p.name)
        return pi.Ok(p)


def test_a_cluster_scoped_process_on_an_embedded_node_is_an_ordinary_one():
    async def main():
        a = await procreg.get_or_spawn("c", Counter, 5, scope="cluster")
        b = await procreg.get_or_spawn("c", Counter, 9, scope="cluster")
        pid, started = await procreg.spawn_unique("c", Counter, scope="cluster")
        return a, b, pid, started, await procreg.call(a, "incr"), await procreg.call(a, "moved")

    a, b, pid, started, n, moved = procreg.run(main)
    assert a == b == pid and not started and n == 6 and moved is None


def test_bad_scopes_are_refused_before_anything_starts():
    async def main():
        with pytest.raises(ValueError, match="scope must be one of"):
            await procreg.get_or_spawn("x", Counter, scope="galaxy")
        with pytest.raises(ValueError, match="scope must be one of"):
            await pi.start(pi.Pi("j", "jobs", "root", Job, scope="everywhere"))
        return procreg.current_node().registry.peek("x", "default")

    assert procreg.run(main) is None
    with pytest.raises(ValueError, match="needs a key"):
        procreg.child(Counter, id="c", scope="cluster")
    with pytest.raises(ValueError, match="scope must be one of"):
        procreg.child(Counter, id="c", key="k", scope="planet")


def test_takeover_is_none_outside_a_moved_start():
    assert procreg.takeover() is None


def test_racing_pi_starts_on_one_node_run_init_once():
    INITS.clear()

    async def main():
        return await asyncio.gather(
            *(pi.start(pi.Pi("job", "jobs", "root", Job, scope="cluster")) for _ in range(10))
        )

    results = procreg.run(main)
    started = [r for r in results if not isinstance(r, pi.Error)]
    refused = [r for r in results if isinstance(r, pi.Error)]
    assert len(started) == 1 and len(refused) == 9
    assert all(r.code[0] == "already_started" and r.code[1] == started[0][0] for r in refused)
    assert INITS == ["job"]


def test_a_keyed_child_whose_key_is_held_never_runs_init():
    log = []

    class Logged(procreg.Server):
        def init(self, tag):
            log.append(tag)

    async def main():
        await procreg.register("held", procreg.spawn(_forever))
        sup = await Supervisor.start([], name="s")
        with pytest.raises(procreg.AlreadyRegistered):
            await Supervisor.start_child(sup, procreg.child(Logged, "b", id="b", key="held"))
        return await Supervisor.which_children(sup)

    assert procreg.run(main) == [] and log == []


async def _forever():
    await procreg.receive()
