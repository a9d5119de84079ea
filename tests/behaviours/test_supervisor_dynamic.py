"""Supervisors: dynamic children, names, the root supervisor, stop, and bad input.

OTP's ``start_child`` / ``terminate_child`` / ``restart_child`` / ``delete_child`` /
``which_children`` / ``count_children`` semantics: a start that fails returns the error
and leaves the tree as it was; ``terminate_child`` keeps the spec (except for a
temporary child); ``delete_child`` of a running child and requests about unknown ids
are errors. Bad input is refused at the call, before any process starts.
"""

from __future__ import annotations

import asyncio

import pytest

import procreg
from conftest import child_pids, wait_down
from procreg import ChildSpec, ChildStatus, Supervisor, SupervisorError, child
from procreg.supervisor import AlreadyPresent, AlreadyStarted, root

pytestmark = pytest.mark.timeout(30)


# -- helpers ------------------------------------------------------------------------


class Worker(procreg.Server):
    """Logs ``("start", name)`` and ``("stop", name, reason)``; crashes on a cast."""

    def init(self, log, name):
        self.log = log
        self.name = name
        log.append(("start", name))

    def handle_call(self, request):
        return self.name

    def handle_cast(self, msg):
        raise RuntimeError(f"{self.name}: {msg}")

    def terminate(self, reason):
        self.log.append(("stop", self.name, reason if isinstance(reason, str) else "crash"))


class FailingInit(procreg.Server):
    def init(self, log):
        log.append(("start", "failing"))
        raise ValueError("init failed")


class FailingAsyncInit(procreg.Server):
    async def init(self, log):
        await asyncio.sleep(0)
        log.append(("start", "failing"))
        raise ValueError("init failed")


def w(log, name, **opts):
    opts.setdefault("shutdown", 0.5)
    return child(Worker, log, name, id=name, **opts)


async def crash(pid):
    ref = procreg.monitor(pid)
    procreg.cast(pid, "crash")
    return (await wait_down(ref)).reason


def nprocs():
    return procreg.current_node().process_count()


# -- start_child ------------------------------------------------------------------------


def test_start_child_adds_a_child_after_the_others():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        pid = await Supervisor.start_child(sup, w(log, "b", restart="transient"))
        rows = await Supervisor.which_children(sup)
        counts = await Supervisor.count_children(sup)
        return pid, rows, counts, await procreg.call(pid, "name")

    pid, rows, counts, name = procreg.run(main)
    assert [r.id for r in rows] == ["a", "b"]
    assert all(isinstance(r, ChildStatus) for r in rows)
    assert rows[1] == ChildStatus("b", pid, "worker", "transient")
    assert rows[0].kind == "worker" and rows[0].restart == "permanent"
    assert counts == {"specs": 2, "active": 2, "supervisors": 0, "workers": 2}
    assert name == "b"


def test_a_dynamic_child_is_supervised_like_the_others():
    log = []

    async def main():
        sup = await Supervisor.start([])
        first = await Supervisor.start_child(sup, w(log, "d", key="dyn"))
        await crash(first)
        second = (await child_pids(sup))["d"]
        return first, second, await procreg.whereis("dyn")

    first, second, found = procreg.run(main)
    assert second not in (None, first)
    assert found == second


def test_count_children_counts_supervisors_and_workers():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), child(Supervisor, [w(log, "x")], id="inner")])
        await Supervisor.start_child(sup, child(Supervisor, [], id="inner2"))
        await Supervisor.terminate_child(sup, "a")
        rows = await Supervisor.which_children(sup)
        return await Supervisor.count_children(sup), {r.id: r.kind for r in rows}

    counts, kinds = procreg.run(main)
    assert counts == {"specs": 3, "active": 2, "supervisors": 2, "workers": 1}
    assert kinds == {"a": "worker", "inner": "supervisor", "inner2": "supervisor"}


@pytest.mark.parametrize("factory", [FailingInit, FailingAsyncInit], ids=["sync", "async"])
def test_a_start_child_that_fails_raises_its_error_and_changes_nothing(factory):
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        rows = await Supervisor.which_children(sup)
        counts = await Supervisor.count_children(sup)
        n = nprocs()
        with pytest.raises(ValueError, match="init failed"):
            await Supervisor.start_child(sup, child(factory, log, id="f"))
        await asyncio.sleep(0)
        return (
            rows == await Supervisor.which_children(sup),
            counts == await Supervisor.count_children(sup),
            n == nprocs(),
            procreg.is_alive(sup),
        )

    assert procreg.run(main) == (True, True, True, True)
    assert log[:2] == [("start", "a"), ("start", "failing")]


def test_a_start_child_whose_key_is_taken_fails_and_leaves_no_process():
    log = []

    async def holder():
        await procreg.receive()

    async def main():
        other = procreg.spawn(holder)
        await procreg.register("busy", other)
        sup = await Supervisor.start([])
        n = nprocs()
        with pytest.raises(procreg.AlreadyRegistered):
            await Supervisor.start_child(sup, w(log, "k", key="busy"))
        await asyncio.sleep(0)
        return n == nprocs(), await child_pids(sup), await procreg.whereis("busy") == other

    assert procreg.run(main) == (True, {}, True)


def test_start_child_of_an_id_that_is_running_is_an_error():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        first = (await child_pids(sup))["a"]
        with pytest.raises(AlreadyStarted) as info:
            await Supervisor.start_child(sup, w(log, "a"))
        return first, info.value, await child_pids(sup)

    first, err, kids = procreg.run(main)
    assert isinstance(err, SupervisorError)
    assert err.pid == first
    assert kids == {"a": first}
    assert log.count(("start", "a")) == 1  # the duplicate was never started


def test_start_child_of_an_id_that_is_present_but_stopped_is_an_error():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        await Supervisor.terminate_child(sup, "a")
        with pytest.raises(AlreadyPresent):
            await Supervisor.start_child(sup, w(log, "a"))
        return await child_pids(sup)

    assert procreg.run(main) == {"a": None}
    assert log.count(("start", "a")) == 1


def test_start_child_of_something_that_is_not_a_spec_is_a_type_error():
    async def main():
        sup = await Supervisor.start([])
        with pytest.raises(TypeError):
            await Supervisor.start_child(sup, Worker)
        return await child_pids(sup)

    assert procreg.run(main) == {}


# -- terminate / restart / delete ----------------------------------------------------------


def test_terminate_child_keeps_the_spec_and_restart_child_starts_it_again():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")])
        first = (await child_pids(sup))["a"]
        await Supervisor.terminate_child(sup, "a")
        stopped = await child_pids(sup)
        counts = await Supervisor.count_children(sup)
        alive = procreg.is_alive(first)
        second = await Supervisor.restart_child(sup, "a")
        return first, stopped, counts, alive, second, await child_pids(sup), list(log)

    first, stopped, counts, alive, second, after, log = procreg.run(main)
    assert stopped["a"] is None and stopped["b"] is not None
    assert counts == {"specs": 2, "active": 1, "supervisors": 0, "workers": 2}
    assert not alive
    assert second not in (None, first)
    assert list(after) == ["a", "b"] and after["a"] == second  # keeps its place
    assert log[2:] == [("stop", "a", "shutdown"), ("start", "a")]


def test_one_for_all_restarts_a_terminated_sibling_too():
    # "all other child processes are terminated and then all child processes are
    # restarted": OTP starts every child that has a spec, stopped ones included
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")], strategy="one_for_all")
        await Supervisor.terminate_child(sup, "a")
        await crash((await child_pids(sup))["b"])
        return await child_pids(sup)

    kids = procreg.run(main)
    assert kids["a"] is not None and kids["b"] is not None


def test_terminate_child_of_a_temporary_child_removes_its_spec():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "t", restart="temporary"), w(log, "p")])
        await Supervisor.terminate_child(sup, "t")
        kids = await child_pids(sup)
        with pytest.raises(SupervisorError):
            await Supervisor.restart_child(sup, "t")
        return list(kids), kids["p"] is not None

    assert procreg.run(main) == (["p"], True)


def test_terminate_child_twice_is_harmless():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        await Supervisor.terminate_child(sup, "a")
        await Supervisor.terminate_child(sup, "a")
        return await child_pids(sup)

    assert procreg.run(main) == {"a": None}
    assert log.count(("stop", "a", "shutdown")) == 1


def test_restart_child_of_a_running_child_is_an_error():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        first = (await child_pids(sup))["a"]
        with pytest.raises(SupervisorError):
            await Supervisor.restart_child(sup, "a")
        return first == (await child_pids(sup))["a"]

    assert procreg.run(main) is True


def test_restart_child_that_fails_raises_and_leaves_it_stopped():
    state = {"fail": False}

    class Sometimes(procreg.Server):
        def init(self):
            if state["fail"]:
                raise OSError("not now")

    async def main():
        sup = await Supervisor.start([child(Sometimes, id="s")])
        await Supervisor.terminate_child(sup, "s")
        state["fail"] = True
        with pytest.raises(OSError, match="not now"):
            await Supervisor.restart_child(sup, "s")
        stopped = await child_pids(sup)
        state["fail"] = False
        pid = await Supervisor.restart_child(sup, "s")
        return stopped, pid, await child_pids(sup)

    stopped, pid, after = procreg.run(main)
    assert stopped == {"s": None}
    assert after == {"s": pid}


def test_delete_child_removes_a_terminated_child():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b")])
        await Supervisor.terminate_child(sup, "a")
        await Supervisor.delete_child(sup, "a")
        kids = await child_pids(sup)
        counts = await Supervisor.count_children(sup)
        # the id is free again
        again = await Supervisor.start_child(sup, w(log, "a"))
        return kids, counts, again, await child_pids(sup)

    kids, counts, again, after = procreg.run(main)
    assert list(kids) == ["b"]
    assert counts == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}
    assert list(after) == ["b", "a"] and after["a"] == again


def test_delete_child_of_a_running_child_is_an_error():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        first = (await child_pids(sup))["a"]
        with pytest.raises(SupervisorError):
            await Supervisor.delete_child(sup, "a")
        return await child_pids(sup) == {"a": first}, procreg.is_alive(first)

    assert procreg.run(main) == (True, True)


@pytest.mark.parametrize(
    "op",
    ["terminate_child", "restart_child", "delete_child", "get_child_spec"],
)
def test_requests_about_an_unknown_child_raise_supervisor_error(op):
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")])
        with pytest.raises(SupervisorError, match="nope"):
            await getattr(Supervisor, op)(sup, "nope")
        return procreg.is_alive(sup), list(await child_pids(sup))

    assert procreg.run(main) == (True, ["a"])


def test_get_child_spec_returns_the_spec():
    log = []

    async def main():
        spec = w(log, "a", restart="transient", shutdown=0.25, key="ka")
        sup = await Supervisor.start([spec])
        return spec, await Supervisor.get_child_spec(sup, "a")

    spec, got = procreg.run(main)
    assert isinstance(got, ChildSpec)
    assert got == spec
    assert (got.id, got.restart, got.shutdown, got.key) == ("a", "transient", 0.25, "ka")


def test_child_defaults():
    log = []
    worker = child(Worker, log, "a", id="a")
    sup = child(Supervisor, [], id="s")
    assert (worker.restart, worker.shutdown, worker.is_supervisor) == ("permanent", 5.0, False)
    assert (sup.restart, sup.shutdown, sup.is_supervisor) == ("permanent", "infinity", True)


# -- stopping a supervisor ------------------------------------------------------------------


def test_supervisor_stop_stops_the_children_in_reverse_and_waits_for_the_end():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a"), w(log, "b"), w(log, "c")], name="tree")
        kids = await child_pids(sup)
        await Supervisor.stop("tree")
        return (
            procreg.is_alive(sup),
            [procreg.is_alive(p) for p in kids.values()],
            await procreg.whereis("tree", table="supervisors"),
        )

    alive, kids_alive, named = procreg.run(main)
    assert not alive and kids_alive == [False, False, False] and named is None
    assert log[3:] == [
        ("stop", "c", "shutdown"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


def test_requests_to_a_stopped_supervisor_raise_no_process():
    async def main():
        sup = await Supervisor.start([])
        await Supervisor.stop(sup)
        with pytest.raises(procreg.NoProcess):
            await Supervisor.which_children(sup)

    procreg.run(main)


def test_a_supervisor_can_be_driven_from_outside_any_process():
    log = []

    async def outside():
        async with procreg.Node() as node:
            sup = await Supervisor.start([w(log, "x")])
            added = await Supervisor.start_child(sup, w(log, "y"))
            kids = await child_pids(sup)
            await Supervisor.stop(sup)
            return kids, added, node.process_count()

    kids, added, left = asyncio.run(outside())
    assert list(kids) == ["x", "y"] and kids["y"] == added
    assert left == 0
    assert log[2:] == [("stop", "y", "shutdown"), ("stop", "x", "shutdown")]


# -- named supervisors and the root ---------------------------------------------------------


def test_a_named_supervisor_is_reached_by_its_name():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")], name="web")
        by_name = await Supervisor.which_children("web")
        by_pid = await Supervisor.which_children(sup)
        new = await Supervisor.start_child("web", w(log, "b"))
        await Supervisor.terminate_child("web", "a")
        return (
            sup,
            await procreg.whereis("web", table="supervisors"),
            by_name == by_pid,
            await child_pids("web"),
            new,
            await Supervisor.count_children("web"),
        )

    sup, found, same, kids, new, counts = procreg.run(main)
    assert found == sup and same
    assert kids == {"a": None, "b": new}
    assert counts["specs"] == 2 and counts["active"] == 1


def test_an_unknown_supervisor_name_raises_no_process():
    async def main():
        with pytest.raises(procreg.NoProcess):
            await Supervisor.which_children("nobody")

    procreg.run(main)


def test_a_name_in_use_fails_the_second_start_and_starts_nothing():
    log = []

    async def main():
        first = await Supervisor.start([w(log, "a")], name="web")
        n = nprocs()
        with pytest.raises(procreg.AlreadyRegistered):
            await Supervisor.start([w(log, "b")], name="web")
        await asyncio.sleep(0)
        return n == nprocs(), await procreg.whereis("web", table="supervisors") == first

    assert procreg.run(main) == (True, True)
    assert ("start", "b") not in log


def test_the_name_is_released_when_the_supervisor_gives_up():
    log = []

    async def main():
        sup = await Supervisor.start([w(log, "a")], name="fragile", intensity=0)
        ref = procreg.monitor(sup)
        await crash((await child_pids(sup))["a"])
        await wait_down(ref)
        return await procreg.whereis("fragile", table="supervisors")

    assert procreg.run(main) is None


def test_root_is_one_supervisor_and_takes_children():
    log = []

    async def main():
        r1 = await root()
        r2 = await root()
        pid = await Supervisor.start_child(r1, w(log, "svc", key="svc"))
        by_name = await child_pids("root")
        return (
            r1,
            r2,
            await procreg.whereis("root", table="supervisors"),
            pid,
            by_name,
            await procreg.whereis("svc"),
        )

    r1, r2, named, pid, kids, svc = procreg.run(main)
    assert r1 == r2 == named
    assert kids == {"svc": pid} and svc == pid


def test_concurrent_first_uses_of_root_share_one_supervisor():
    async def main():
        before = nprocs()
        pids_ = await asyncio.gather(root(), root(), root())
        return set(pids_), nprocs() - before

    found, started = procreg.run(main)
    assert len(found) == 1
    assert started == 1


def test_root_supervises_what_it_is_given():
    log = []

    async def main():
        r = await root()
        first = await Supervisor.start_child(r, w(log, "svc"))
        await crash(first)
        return first, (await child_pids("root"))["svc"]

    first, second = procreg.run(main)
    assert second not in (None, first)


# -- bad input: refused at the call, before anything starts ----------------------------------


def check_nothing_started(log, make):
    """Run `make()` (which must raise) inside a node; return the exception, and check
    that no process was left and no child was started."""

    async def main():
        n = nprocs()
        try:
            await make()
        except Exception as exc:
            await asyncio.sleep(0)
            return exc, nprocs() - n
        return None, nprocs() - n

    exc, extra = procreg.run(main)
    assert extra == 0
    assert log == []
    return exc


@pytest.mark.parametrize(
    ("opts", "error"),
    [
        ({"strategy": "one_for_many"}, ValueError),
        ({"strategy": "simple_one_for_one"}, ValueError),
        ({"intensity": -1}, ValueError),
        ({"intensity": 1.5}, TypeError),
        ({"period": 0}, ValueError),
        ({"period": -1.0}, ValueError),
        ({"period": "5"}, ValueError),
    ],
)
def test_bad_supervisor_flags_are_refused(opts, error):
    log = []

    async def make():
        await Supervisor.start([w(log, "a")], **opts)

    exc = check_nothing_started(log, make)
    assert isinstance(exc, error)
    assert str(next(iter(opts))) in str(exc)  # the message names the bad flag


def test_bad_flags_of_a_subclass_are_refused():
    log = []

    class Bad(Supervisor):
        strategy = "all_for_one"

        def children(self):
            return [w(log, "a")]

    async def make():
        await Bad.start()

    assert isinstance(check_nothing_started(log, make), ValueError)


def test_duplicate_child_ids_are_refused():
    log = []

    async def make():
        await Supervisor.start([w(log, "a"), w(log, "b"), w(log, "a")])

    exc = check_nothing_started(log, make)
    assert isinstance(exc, ValueError) and "'a'" in str(exc)


def test_children_that_are_not_specs_are_refused():
    log = []

    async def make():
        await Supervisor.start([w(log, "a"), Worker])

    assert isinstance(check_nothing_started(log, make), TypeError)


def test_a_child_spec_without_an_id_is_refused():
    with pytest.raises(ValueError, match="id"):
        child(Worker, [], "a")


def test_an_unhashable_child_id_is_refused():
    with pytest.raises(TypeError):
        child(Worker, [], "a", id=["a"])


@pytest.mark.parametrize("restart", ["sometimes", "Permanent", None])
def test_an_unknown_restart_type_is_refused(restart):
    with pytest.raises(ValueError, match="restart"):
        child(Worker, [], "a", id="a", restart=restart)


@pytest.mark.parametrize("shutdown", [-1, "never", True, "5"])
def test_a_bad_shutdown_is_refused(shutdown):
    with pytest.raises(ValueError, match="shutdown"):
        child(Worker, [], "a", id="a", shutdown=shutdown)


def _plain_function():
    return None


class _NotAServer:
    pass


@pytest.mark.parametrize(
    "factory",
    [lambda: None, _plain_function, _NotAServer, Worker.__new__(Worker), None, "Worker"],
    ids=["lambda", "sync-def", "plain-class", "server-instance", "none", "str"],
)
def test_a_factory_that_is_not_a_server_async_def_or_supervisor_is_refused(factory):
    with pytest.raises(TypeError, match="factory"):
        child(factory, id="x")


def test_supervisor_keywords_on_a_worker_child_are_refused():
    with pytest.raises(TypeError):
        child(Worker, [], "a", id="a", strategy="one_for_all")


@pytest.mark.parametrize(
    "flags",
    [{"strategy": "bogus"}, {"intensity": -1}, {"period": 0}, {"stratgy": "one_for_all"}],
    ids=["strategy", "intensity", "period", "unknown-keyword"],
)
def test_bad_flags_of_a_nested_supervisor_are_refused_by_child(flags):
    with pytest.raises((ValueError, TypeError)):
        child(Supervisor, [], id="inner", **flags)


def test_an_unhashable_supervisor_name_is_refused():
    log = []

    async def make():
        await Supervisor.start([w(log, "a")], name=["web"])

    assert isinstance(check_nothing_started(log, make), TypeError)
