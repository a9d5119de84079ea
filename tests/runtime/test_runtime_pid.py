"""Pid and Ref: the value types of the runtime."""

from __future__ import annotations

import copy
import pickle

import pytest

import procreg
from procreg import Pid, Ref


def test_pid_repr_is_short():
    p = Pid("local", 1, 42)
    assert repr(p) == "<local.1.42>"
    assert str(p) == "<local.1.42>"
    assert repr(Pid("web1", 7, 3)) == "<web1.7.3>"


def test_pid_properties():
    p = Pid("web1", 3, 99)
    assert p.node == "web1"
    assert p.creation == 3
    assert p.serial == 99


def test_pid_equality_and_hash():
    a = Pid("n", 1, 5)
    b = Pid("n", 1, 5)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Pid("n", 1, 6)
    assert a != Pid("n", 2, 5)
    assert a != Pid("m", 1, 5)
    d = {a: "x"}
    assert d[b] == "x"
    assert len({a, b, Pid("n", 1, 6)}) == 2


def test_pid_ordering():
    pids = [Pid("b", 1, 1), Pid("a", 2, 1), Pid("a", 1, 10), Pid("a", 1, 2)]
    assert sorted(pids) == [Pid("a", 1, 2), Pid("a", 1, 10), Pid("a", 2, 1), Pid("b", 1, 1)]
    assert Pid("a", 1, 2) < Pid("a", 1, 10)
    assert Pid("a", 1, 10) <= Pid("a", 1, 10)
    assert Pid("a", 2, 0) > Pid("a", 1, 999)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pid_pickle_round_trip(protocol):
    p = Pid("web1", 4, 123456)
    q = pickle.loads(pickle.dumps(p, protocol=protocol))
    assert q == p
    assert type(q) is Pid
    assert q.node == "web1" and q.creation == 4 and q.serial == 123456
    assert repr(q) == "<web1.4.123456>"


def test_pid_copy():
    p = Pid("x", 1, 2)
    assert copy.copy(p) == p and type(copy.copy(p)) is Pid
    assert copy.deepcopy(p) == p and type(copy.deepcopy(p)) is Pid


def test_spawned_pids_carry_node_name_and_creation():
    async def idle():
        await procreg.receive(timeout=1)

    async def main():
        node = procreg.current_node()
        me = procreg.self()
        other = procreg.spawn(idle)
        procreg.exit(other, "kill")
        return node.name, node.creation, me, other

    name, creation, me, other = procreg.run(main, name="web7")
    assert name == "web7"
    assert me.node == "web7" and other.node == "web7"
    assert me.creation == creation == other.creation
    assert me != other
    assert me.serial != other.serial
    assert repr(me) == f"<web7.{creation}.{me.serial}>"


def test_spawned_pids_are_unique():
    async def nothing():
        return None

    async def main():
        return [procreg.spawn(nothing) for _ in range(500)]

    pids = procreg.run(main)
    assert len(set(pids)) == 500


def test_ref_equality_and_hash():
    a = Ref("n", 5)
    b = Ref("n", 5)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Ref("n", 6)
    assert a != Ref("m", 5)
    assert a != 5
    assert a != ("n", 5)


def test_new_refs_are_distinct():
    refs = [Ref("n") for _ in range(100)]
    assert len(set(refs)) == 100
    assert all(r == r for r in refs)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_ref_pickle_round_trip(protocol):
    r = Ref("web1")
    q = pickle.loads(pickle.dumps(r, protocol=protocol))
    assert q == r
    assert hash(q) == hash(r)
    assert type(q) is Ref
    assert q != Ref("web1")


def test_monitor_refs_are_unique_and_usable_as_keys():
    async def idle():
        await procreg.receive(timeout=1)

    async def main():
        pid = procreg.spawn(idle)
        refs = [procreg.monitor(pid) for _ in range(10)]
        procreg.exit(pid, "kill")
        downs = [await procreg.receive(timeout=1) for _ in range(10)]
        return refs, downs

    refs, downs = procreg.run(main)
    assert len(set(refs)) == 10
    assert {d.ref for d in downs} == set(refs)


def test_down_and_exit_messages_pickle():
    p = Pid("a", 1, 2)
    r = Ref("a", 9)
    down = procreg.Down(r, p, "normal")
    ex = procreg.Exit(p, "kill")
    assert pickle.loads(pickle.dumps(down)) == down
    assert pickle.loads(pickle.dumps(ex)) == ex
    assert down.ref == r and down.pid == p and down.reason == "normal"
    assert ex.pid == p and ex.reason == "kill"
