"""A full mailbox seen from another node (issue 13): the receiving node applies the
bound. Casts to it are dropped and counted there; a remote call fails with
`Overloaded`, as a local one does."""

from __future__ import annotations

import pytest

from .harness import wait_for

pytestmark = pytest.mark.timeout(60)


def test_remote_casts_to_a_full_mailbox_are_dropped_and_calls_fail_with_overloaded(cluster):
    n1, n2 = cluster(["n1", "n2"])
    stuck = n1.ok("spawn", factory="Stuck")
    assert n1.ok("info", pid=stuck)["max_mailbox"] == 3
    n2.ok("cast", pid=stuck, msg="blocks it")
    wait_for(lambda: n1.ok("info", pid=stuck)["status"] == "busy", 10, what="the blocked cast")
    for i in range(5):
        n2.ok("cast", pid=stuck, msg=i)  # 3 fit, 2 are dropped on n1
    wait_for(lambda: n1.ok("node_stats")["dropped"] == 2, 10, what="two drops on n1")
    answer = n2.req("call", pid=stuck, request=["echo", 1])
    assert answer["ok"] is False and answer["error"] == "Overloaded"
    assert "full (3 messages)" in answer["message"]  # its pid and bound came across
    info = n1.ok("info", pid=stuck)
    assert (info["mailbox"], info["dropped"], info["mailbox_peak"]) == (3, 3, 3)
    assert n1.ok("node_stats")["dropped"] == 3
    assert n2.ok("node_stats")["dropped"] == 0  # counted where the mailbox is


def test_publish_counts_local_members_with_a_full_mailbox_as_missed(cluster):
    n1, n2 = cluster(["n1", "n2"])
    stuck = n1.ok("spawn", factory="Stuck")
    n1.ok("cast", pid=stuck, msg="blocks it")
    wait_for(lambda: n1.ok("info", pid=stuck)["status"] == "busy", 10, what="the blocked cast")
    for i in range(3):
        n1.ok("cast", pid=stuck, msg=i)  # its mailbox is full now
    assert n1.ok("join_pid", group="g", pid=stuck) is True
    n2.ok("join", group="g")  # a member on the other node: reached once handed over
    wait_for(lambda: len(n1.ok("members", group="g")) == 2, 10, what="both members")
    assert n1.ok("publish_missed", group="g", msg="hello") == [1, 1]
    assert n1.ok("info", pid=stuck)["dropped"] == 1
