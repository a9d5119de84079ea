"""n2o_pi (`procreg.pi`): the proc protocol, start/stop/restart/send/cast/pid, the
n2o flaws it mends, bad input, and shutdown within `Pi.timeout`.

A test module here is a `SimpleNamespace` holding ``proc`` (and maybe ``terminate``):
`Pi.module` is "any object with proc(msg, pi)". Every proc returns a *new* record made
with `dataclasses.replace`, so a library that ignored the returned `Pi` would fail.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest

import procreg
from conftest import wait_until
from procreg import pi
from procreg.supervisor import root

TABLE = "pitest"

# -- a test module -----------------------------------------------------------------


def _handle(msg, p, log, init_error):
    """The shared logic of the sync and async procs.

    Calls: ("get",), ("add", n), ("fail", code). Casts / other messages: ("inc", n),
    ("inc_reply", n) (returns a Reply whose data must be dropped), ("fail", code),
    ("stop", reason) (ends the process with `reason`), ("crash",).
    """
    log.append(("proc", msg, procreg.self()))
    if msg is pi.INIT:
        if init_error is not None:
            return pi.Error(init_error)
        return pi.Ok(replace(p, state=(p.state, "inited")) if p.state == "mark_init" else p)
    tag = msg[0]
    if tag == "get":
        return pi.Reply(p.state, p)
    if tag == "add":
        new = replace(p, state=p.state + msg[1])
        return pi.Reply(("added", new.state), new)
    if tag == "inc":
        return pi.Ok(replace(p, state=p.state + msg[1]))
    if tag == "inc_reply":
        return pi.Reply(("dropped", msg[1]), replace(p, state=p.state + msg[1]))
    if tag == "fail":
        return pi.Error(msg[1])
    if tag == "stop":
        raise procreg.Stop(msg[1])
    if tag == "crash":
        raise RuntimeError("crash on purpose")
    return pi.Error(("unknown", msg))


def make_module(log, *, is_async=False, init_error=None, terminate=True):
    """A pi module whose proc and terminate record what they see in `log`."""
    if is_async:

        async def proc(msg, p):
            await asyncio.sleep(0)
            return _handle(msg, p, log, init_error)

        async def term(reason, p):
            await asyncio.sleep(0)
            log.append(("terminate", reason, p.state))

    else:

        def proc(msg, p):
            return _handle(msg, p, log, init_error)

        def term(reason, p):
            log.append(("terminate", reason, p.state))

    if terminate:
        return SimpleNamespace(proc=proc, terminate=term)
    return SimpleNamespace(proc=proc)


def make_pi(name, log, *, state=0, sup="root", table=TABLE, is_async=False, **kw):
    opts = {k: kw.pop(k) for k in ("init_error", "terminate") if k in kw}
    return pi.Pi(name, table, sup, make_module(log, is_async=is_async, **opts), state, **kw)


async def child_ids(sup="root"):
    return {c.id: c for c in await procreg.Supervisor.which_children(sup)}


async def assert_nothing_mailed():
    with pytest.raises(TimeoutError):
        await procreg.receive(timeout=0.05)


both = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


# -- the proc protocol -------------------------------------------------------------


@both
def test_init_is_the_first_message_and_its_pi_is_kept(is_async):
    log = []

    async def main():
        started = await pi.start(make_pi("p", log, state="mark_init", is_async=is_async))
        state = await pi.send(TABLE, "p", ("get",))
        return started, state

    (pid, name), state = procreg.run(main)
    assert name == "p"
    assert log[0] == ("proc", pi.INIT, pid)  # INIT first, in the process itself
    assert state == ("mark_init", "inited")  # the Pi returned by Ok(pi) is the state


@both
def test_call_gets_reply_data_and_updates_state(is_async):
    log = []

    async def main():
        await pi.start(make_pi("p", log, state=10, is_async=is_async))
        first = await pi.send(TABLE, "p", ("add", 5))
        second = await pi.send(TABLE, "p", ("add", 1))
        return first, second, await pi.send(TABLE, "p", ("get",))

    assert procreg.run(main) == (("added", 15), ("added", 16), 16)


@both
def test_casts_and_plain_messages_update_state(is_async):
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, state=0, is_async=is_async))
        assert pi.cast(TABLE, "p", ("inc", 2)) is None
        procreg.send(pi.pid(TABLE, "p"), ("inc", 40))  # an "other message" (info)
        procreg.send(pid, ("inc", 100))
        return await pi.send(TABLE, "p", ("get",))

    assert procreg.run(main) == 142
    handled = [m for kind, m, _ in log if kind == "proc" and m is not pi.INIT]
    assert handled == [("inc", 2), ("inc", 40), ("inc", 100), ("get",)]


@both
def test_reply_data_from_a_cast_or_message_is_dropped(is_async):
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, state=0, is_async=is_async))
        pi.cast(TABLE, "p", ("inc_reply", 3))
        procreg.send(pid, ("inc_reply", 4))
        state = await pi.send(TABLE, "p", ("get",))
        await assert_nothing_mailed()  # the Reply's data went nowhere
        return state, procreg.is_alive(pid)

    assert procreg.run(main) == (7, True)  # but its pi was taken


@both
def test_error_from_a_call_reaches_the_caller(is_async):
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, state=5, is_async=is_async))
        err = await pi.send(TABLE, "p", ("fail", "bad_request"))
        pi.cast(TABLE, "p", ("fail", "ignored"))  # an Error from a cast changes nothing
        return err, await pi.send(TABLE, "p", ("get",)), procreg.is_alive(pid)

    err, state, alive = procreg.run(main)
    assert isinstance(err, pi.Error)
    assert err == pi.Error("bad_request")
    assert state == 5 and alive


@both
def test_error_from_init_fails_start_and_leaves_nothing(is_async):
    log = []

    async def main():
        before = await child_ids()
        result = await pi.start(make_pi("p", log, init_error="no_way", is_async=is_async))
        init_pid = log[0][2]
        return (
            result,
            procreg.is_alive(init_pid),
            pi.pid(TABLE, "p"),
            await procreg.whereis("p", table=TABLE),
            procreg.entries(TABLE),
            before,
            await child_ids(),
        )

    result, alive, found, where, entries, before, after = procreg.run(main)
    assert result == pi.Error("no_way")
    assert log[0][:2] == ("proc", pi.INIT)
    assert not alive
    assert found is None and where is None and entries == []
    assert (TABLE, "p") not in after and after.keys() == before.keys()
    assert not any(entry[0] == "terminate" for entry in log)


@both
def test_terminate_gets_the_reason_and_the_last_pi_on_stop(is_async):
    log = []

    async def main():
        await pi.start(make_pi("p", log, state=1, is_async=is_async))
        pi.cast(TABLE, "p", ("inc", 1))
        await pi.send(TABLE, "p", ("add", 10))
        return await pi.stop(TABLE, "p")

    last = procreg.run(main)
    assert last.state == 12
    assert log[-1] == ("terminate", "shutdown", 12)


def test_async_terminate_with_a_sync_proc_runs():
    log = []

    async def term(reason, p):
        await asyncio.sleep(0)
        log.append(("terminate", reason, p.state))

    module = SimpleNamespace(proc=make_module(log).proc, terminate=term)

    async def main():
        await pi.start(pi.Pi("p", TABLE, "root", module, 3))
        await pi.stop(TABLE, "p")
        await asyncio.sleep(0.05)

    with warnings.catch_warnings():
        # when the hook is not awaited, "coroutine ... was never awaited" is warned
        warnings.simplefilter("ignore", RuntimeWarning)
        procreg.run(main)
        gc.collect()
    assert ("terminate", "shutdown", 3) in log


def test_a_module_without_terminate_stops_fine():
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, state=4, terminate=False))
        ref = procreg.monitor(pid)
        last = await pi.stop(TABLE, "p")
        return last, await procreg.receive(timeout=1), ref, pid

    last, down, ref, pid = procreg.run(main)
    assert last.state == 4
    assert down == procreg.Down(ref, pid, "shutdown")


# -- start / stop / restart / send / cast / pid --------------------------------------


@pytest.mark.parametrize("sup_kind", ["root", "named", "pid"])
def test_start_registers_and_supervises_under_sup(sup_kind):
    log = []

    async def main():
        if sup_kind == "root":
            sup, sup_pid = "root", await root()
        else:
            sup_pid = await procreg.Supervisor.start([], name="mysup")
            sup = "mysup" if sup_kind == "named" else sup_pid
        started = await pi.start(make_pi(("n", 1), log, sup=sup, restart="permanent"))
        return (
            started,
            pi.pid(TABLE, ("n", 1)),
            await procreg.whereis(("n", 1), table=TABLE),
            procreg.entries(TABLE),
            await child_ids(sup_pid),
            await child_ids("root") if sup_kind != "root" else None,
        )

    (pid, name), found, where, entries, kids, root_kids = procreg.run(main)
    assert isinstance(pid, procreg.Pid) and name == ("n", 1)
    assert found == where == pid
    assert entries == [(("n", 1), pid)]
    status = kids[(TABLE, ("n", 1))]
    assert status.pid == pid and status.restart == "permanent" and status.kind == "worker"
    if root_kids is not None:
        assert (TABLE, ("n", 1)) not in root_kids


def test_same_name_in_two_tables_are_two_processes():
    log = []

    async def main():
        a = await pi.start(make_pi("x", log, table="ta", state=1))
        b = await pi.start(make_pi("x", log, table="tb", state=2))
        return a, b, await pi.send("ta", "x", ("get",)), await pi.send("tb", "x", ("get",))

    (pa, _), (pb, _), sa, sb = procreg.run(main)
    assert pa != pb and (sa, sb) == (1, 2)


@both
def test_stop_returns_last_pi_and_removes_everything(is_async):
    log = []

    async def main():
        sup = await procreg.Supervisor.start([], name="mysup")
        pid, _ = await pi.start(make_pi("p", log, sup="mysup", state=0, is_async=is_async))
        ref = procreg.monitor(pid)
        pi.cast(TABLE, "p", ("inc", 3))
        procreg.send(pid, ("inc", 4))
        await pi.send(TABLE, "p", ("add", 5))
        last = await pi.stop(TABLE, "p")
        down = await procreg.receive(timeout=1)
        return (
            last,
            down == procreg.Down(ref, pid, "shutdown"),
            procreg.is_alive(pid),
            pi.pid(TABLE, "p"),
            await procreg.whereis("p", table=TABLE),
            await child_ids(sup),
            await pi.stop(TABLE, "p"),
        )

    last, down_ok, alive, found, where, kids, again = procreg.run(main)
    assert isinstance(last, pi.Pi)
    assert (last.name, last.table, last.sup, last.state) == ("p", TABLE, "mysup", 12)
    assert down_ok and not alive
    assert found is None and where is None
    assert (TABLE, "p") not in kids  # the child spec is gone too
    assert isinstance(again, pi.Error)  # nothing left to stop


@pytest.mark.parametrize("restart", ["transient", "permanent", "temporary"])
def test_restart_keeps_state_and_gives_a_new_pid(restart):
    log = []

    async def main():
        old, _ = await pi.start(make_pi("p", log, state=0, restart=restart))
        pi.cast(TABLE, "p", ("inc", 7))
        result = await pi.restart(TABLE, "p")
        new, name = result
        return (
            old,
            new,
            name,
            procreg.is_alive(old),
            pi.pid(TABLE, "p"),
            await pi.send(TABLE, "p", ("get",)),
            await child_ids(),
        )

    old, new, name, old_alive, found, state, kids = procreg.run(main)
    assert name == "p" and new != old and not old_alive
    assert found == new
    assert state == 7  # the state was kept
    assert kids[(TABLE, "p")].pid == new
    inits = [who for kind, msg, *who in log if kind == "proc" and msg is pi.INIT]
    assert inits == [[old], [new]]  # the new incarnation was initialised
    assert ("terminate", "shutdown", 7) in log


def test_restart_of_a_missing_name_is_an_error():
    async def main():
        return await pi.restart(TABLE, "nobody")

    assert isinstance(procreg.run(main), pi.Error)


def test_send_honours_its_timeout():
    async def slow(msg, p):
        if msg is not pi.INIT:
            await asyncio.sleep(1)
        return pi.Ok(p) if msg is pi.INIT else pi.Reply("late", p)

    async def main():
        await pi.start(pi.Pi("slow", TABLE, "root", SimpleNamespace(proc=slow)))
        with pytest.raises(procreg.CallTimeout):
            await pi.send(TABLE, "slow", "hi", timeout=0.05)

    procreg.run(main)


# -- n2o flaws mended ---------------------------------------------------------------


def test_killed_temporary_process_leaves_no_table_entry():
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, restart="temporary"))
        ref = procreg.monitor(pid)
        procreg.exit(pid, "kill")
        down = await procreg.receive(timeout=1)
        await asyncio.sleep(0.02)  # let the supervisor see the exit
        return (
            down == procreg.Down(ref, pid, "kill"),
            pi.pid(TABLE, "p"),
            await procreg.whereis("p", table=TABLE),
            procreg.entries(TABLE),
            await child_ids(),
            pi.cast(TABLE, "p", ("inc", 1)),
        )

    down_ok, found, where, entries, kids, cast = procreg.run(main)
    assert down_ok
    assert found is None and where is None and entries == []
    assert (TABLE, "p") not in kids  # temporary: not restarted, spec dropped
    assert isinstance(cast, pi.Error)


@pytest.mark.parametrize("restart", ["permanent", "transient"])
@pytest.mark.parametrize("how", ["kill", "exit_boom", "proc_raises"])
def test_after_a_crash_the_entry_points_at_the_new_pid(restart, how):
    log = []

    async def main():
        old, _ = await pi.start(make_pi("p", log, state=1, restart=restart))
        pi.cast(TABLE, "p", ("inc", 1))
        await pi.send(TABLE, "p", ("get",))
        if how == "kill":
            procreg.exit(old, "kill")
        elif how == "exit_boom":
            procreg.exit(old, "boom")
        else:
            pi.cast(TABLE, "p", ("crash",))
        new = await wait_until(lambda: (p := pi.pid(TABLE, "p")) not in (None, old) and p)
        return (
            old,
            new,
            procreg.is_alive(old),
            await procreg.whereis("p", table=TABLE),
            await child_ids(),
            await pi.send(TABLE, "p", ("get",)),
        )

    old, new, old_alive, where, kids, state = procreg.run(main)
    assert new != old and not old_alive
    assert where == new
    assert kids[(TABLE, "p")].pid == new
    assert state == 1  # a supervisor restart begins again from the Pi given to start


def test_cast_to_a_missing_name_returns_error_and_send_raises():
    async def main():
        cast = pi.cast(TABLE, "ghost", "hello")
        with pytest.raises(procreg.NoProcess):
            await pi.send(TABLE, "ghost", "hello")
        return cast, pi.pid(TABLE, "ghost")

    cast, found = procreg.run(main)
    assert isinstance(cast, pi.Error)
    assert found is None


def test_send_and_cast_after_stop():
    log = []

    async def main():
        await pi.start(make_pi("p", log))
        await pi.stop(TABLE, "p")
        cast = pi.cast(TABLE, "p", ("inc", 1))
        with pytest.raises(procreg.NoProcess):
            await pi.send(TABLE, "p", ("get",))
        return cast

    assert isinstance(procreg.run(main), pi.Error)


@both
def test_start_of_a_running_name_returns_already_started(is_async):
    log = []

    async def main():
        pid, _ = await pi.start(make_pi("p", log, state=1, is_async=is_async))
        again = await pi.start(make_pi("p", log, state=999, is_async=is_async))
        return (
            pid,
            again,
            pi.pid(TABLE, "p"),
            await pi.send(TABLE, "p", ("get",)),
            [c for c in (await child_ids()) if c == (TABLE, "p")],
        )

    pid, again, found, state, kids = procreg.run(main)
    assert again == pi.Error(("already_started", pid))
    assert found == pid and state == 1  # the running one is untouched
    assert kids == [(TABLE, "p")]
    assert sum(1 for kind, msg, _ in log if msg is pi.INIT) == 1  # nothing else was started


def test_start_of_a_running_name_under_another_supervisor_is_refused():
    log = []

    async def main():
        await procreg.Supervisor.start([], name="mysup")
        pid, _ = await pi.start(make_pi("p", log, sup="root"))
        again = await pi.start(make_pi("p", log, sup="mysup"))
        return pid, again, await child_ids("mysup")

    pid, again, kids = procreg.run(main)
    assert again == pi.Error(("already_started", pid))
    assert kids == {}


def test_concurrent_starts_of_one_name_start_one_process():
    log = []

    async def main():
        results = await asyncio.gather(*(pi.start(make_pi("p", log, state=i)) for i in range(5)))
        return results, pi.pid(TABLE, "p")

    results, found = procreg.run(main)
    started = [r for r in results if not isinstance(r, pi.Error)]
    assert len(started) == 1 and started[0][0] == found
    assert all(r == pi.Error(("already_started", found)) for r in results if r not in started)


@pytest.mark.parametrize("how", ["exit_normal", "terminate_child"])
def test_start_of_a_stopped_but_present_name_uses_the_new_pi(how):
    log = []

    async def main():
        old, _ = await pi.start(make_pi("p", log, state=1, restart="transient"))
        ref = procreg.monitor(old)
        if how == "exit_normal":
            pi.cast(TABLE, "p", ("stop", "normal"))
        else:
            await procreg.Supervisor.terminate_child("root", (TABLE, "p"))
        await procreg.receive(timeout=1, match=lambda m: getattr(m, "ref", None) == ref)
        kept = (await child_ids())[(TABLE, "p")]  # the spec is still present
        gone = pi.pid(TABLE, "p")
        started = await pi.start(make_pi("p", log, state=100, restart="permanent"))
        return (
            old,
            kept,
            gone,
            started,
            await pi.send(TABLE, "p", ("get",)),
            (await child_ids())[(TABLE, "p")],
        )

    old, kept, gone, started, state, status = procreg.run(main)
    assert kept.pid is None and gone is None
    assert not isinstance(started, pi.Error), started
    new, name = started
    assert new != old and name == "p"
    assert state == 100  # the new Pi's state, not the stopped one's
    assert status.pid == new and status.restart == "permanent"  # the new spec


def test_start_with_an_unknown_named_supervisor_is_an_error():
    log = []

    async def main():
        result = await pi.start(make_pi("p", log, sup="no_such_sup"))
        return result, pi.pid(TABLE, "p")

    result, found = procreg.run(main)
    assert isinstance(result, pi.Error)
    assert found is None


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda log: pi.Pi("p", TABLE, "root", SimpleNamespace(), 0), TypeError),
        (lambda log: pi.Pi("p", TABLE, "root", SimpleNamespace(proc="nope"), 0), TypeError),
        (lambda log: make_pi("p", log, restart="sometimes"), ValueError),
        (lambda log: make_pi("p", log, timeout=-1), ValueError),
        (lambda log: make_pi(["un", "hashable"], log), TypeError),
        (lambda log: make_pi({"a": 1}, log), TypeError),
    ],
    ids=["no_proc", "proc_not_callable", "restart", "timeout", "name_list", "name_dict"],
)
def test_bad_input_is_refused_before_anything_starts(make, exc):
    log = []

    async def main():
        before = await child_ids()
        with pytest.raises(exc):
            await pi.start(make(log))
        return before, await child_ids(), procreg.entries(TABLE)

    before, after, entries = procreg.run(main)
    assert log == []  # proc was never called
    assert after.keys() == before.keys() and entries == []


def test_unhashable_name_in_pid_send_cast_is_a_type_error():
    async def main():
        with pytest.raises(TypeError):
            pi.pid(TABLE, ["x"])
        with pytest.raises(TypeError):
            pi.cast(TABLE, ["x"], "m")
        with pytest.raises(TypeError):
            await pi.send(TABLE, ["x"], "m")

    procreg.run(main)


# -- shutdown within pi.timeout -----------------------------------------------------------


def _slow_terminate_module(done, delay):
    async def proc(msg, p):
        return pi.Ok(p)

    async def terminate(reason, p):
        done.append(("terminate_started", reason))
        await asyncio.sleep(delay)
        done.append("terminate_finished")

    return SimpleNamespace(proc=proc, terminate=terminate)


def test_a_terminate_within_the_timeout_completes():
    done = []

    async def main():
        pid, _ = await pi.start(
            pi.Pi("p", TABLE, "root", _slow_terminate_module(done, 0.01), timeout=1.0)
        )
        ref = procreg.monitor(pid)
        await pi.stop(TABLE, "p")
        return await procreg.receive(timeout=2), ref, pid

    down, ref, pid = procreg.run(main)
    assert down == procreg.Down(ref, pid, "shutdown")
    assert done == [("terminate_started", "shutdown"), "terminate_finished"]


def test_a_terminate_longer_than_the_timeout_is_killed():
    done = []

    async def main():
        pid, _ = await pi.start(
            pi.Pi("p", TABLE, "root", _slow_terminate_module(done, 2.0), timeout=0.1)
        )
        ref = procreg.monitor(pid)
        started = time.monotonic()
        stopped = asyncio.ensure_future(pi.stop(TABLE, "p"))
        down = await procreg.receive(timeout=5)
        elapsed = time.monotonic() - started
        await stopped
        return down, ref, pid, elapsed

    down, ref, pid, elapsed = procreg.run(main)
    assert down == procreg.Down(ref, pid, "kill")
    assert "terminate_finished" not in done
    assert elapsed < 2.0  # killed after pi.timeout, not when terminate ended on its own
