"""What the operator remembers of the objects it writes: valid for one uid, and giving way to the index
as soon as the index shows that resourceVersion or a newer one."""

from __future__ import annotations

from typing import Any

from modelloop.kube import KubeClient
from modelloop.machinery.status import ObjectMemory, StatusWriter, is_newer


def obj(uid: str = "u-1", rv: str = "10", phase: str = "Running", name: str = "iris") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": rv},
        "status": {"phase": phase},
    }


def test_what_was_written_stands_in_for_an_index_that_has_not_seen_it_yet() -> None:
    memory = ObjectMemory()
    memory.remember(obj(rv="12", phase="Succeeded"))

    assert memory.view(obj(rv="10"))["status"]["phase"] == "Succeeded"


def test_the_index_wins_once_it_has_caught_up_and_the_memory_is_dropped() -> None:
    memory = ObjectMemory()
    memory.remember(obj(rv="12", phase="Succeeded"))

    assert memory.view(obj(rv="12", phase="Succeeded"))["metadata"]["resourceVersion"] == "12"
    assert len(memory) == 0


def test_a_status_written_from_outside_afterwards_is_what_the_next_pass_sees() -> None:
    memory = ObjectMemory()
    memory.remember(obj(rv="12", phase="Succeeded"))

    seen = memory.view(obj(rv="15", phase="Failed"))  # edited by a person, or by the other replica

    assert seen["status"]["phase"] == "Failed"
    assert len(memory) == 0


def test_a_recreated_object_of_the_same_name_inherits_nothing() -> None:
    memory = ObjectMemory()
    memory.remember(obj(uid="old", rv="90", phase="Succeeded"))

    seen = memory.view(obj(uid="new", rv="20", phase="Pending"))

    assert seen["status"]["phase"] == "Pending"
    assert len(memory) == 0


def test_resource_versions_compare_as_numbers_and_never_trust_what_is_not_one() -> None:
    assert is_newer("100", "99")
    assert not is_newer("99", "100")
    assert not is_newer("10", "10")
    assert not is_newer("b", "a")  # not etcd's: the index is trusted (writes are preconditioned anyway)


def test_the_writer_knows_the_event_of_its_own_last_write_and_no_other() -> None:
    writer = StatusWriter("inferenceservices", KubeClient())
    writer.memory.remember(obj(rv="12", phase="Succeeded"))

    assert writer.wrote(("ml", "iris"), "12")
    assert not writer.wrote(("ml", "iris"), "13")  # someone else's change after ours
    assert not writer.wrote(("ml", "iris"), None)
    assert not writer.wrote(("ml", "other"), "12")
