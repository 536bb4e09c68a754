"""How the launcher plans its children: K processes per device, distinct names and ports, shared-out threads."""

from __future__ import annotations

import pytest

from worker.config import WorkerSettings
from worker.launcher import plan_children


def test_k_workers_per_device_get_their_own_ports_names_and_a_share_of_the_cores():
    base = WorkerSettings(model="m", workers_per_device=2, metrics_port=9100, health_port=8080, name="box")
    children = plan_children(base, ["cuda:0", "cuda:1"], cores=16)
    assert [c.device for c in children] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert [c.metrics_port for c in children] == [9101, 9102, 9103, 9104]  # 9100: the launcher's merged page
    assert [c.health_port for c in children] == [8080, 8081, 8082, 8083]
    assert len({c.name for c in children}) == 4 and all(c.name.startswith("box:") for c in children)
    assert {c.decode_threads for c in children} == {4} and {c.torch_threads for c in children} == {4}
    assert all(c.devices == "" and c.workers_per_device == 1 for c in children)


def test_threads_given_explicitly_are_kept_and_one_child_keeps_the_automatic_choice():
    explicit = WorkerSettings(model="m", workers_per_device=4, decode_threads=3, torch_threads=1)
    assert {(c.decode_threads, c.torch_threads) for c in plan_children(explicit, ["cuda:0"], cores=16)} == {(3, 1)}
    alone = plan_children(WorkerSettings(model="m"), ["cuda:0"], cores=16)
    assert len(alone) == 1 and (alone[0].decode_threads, alone[0].torch_threads) == (0, 0)
    served = plan_children(WorkerSettings(model="m", metrics_port=9100), ["cuda:0"], cores=16)
    assert [c.metrics_port for c in served] == [9100]  # one process: its own page on the port, no launcher page


def test_default_names_stay_distinct_per_process_and_ports_left_off_stay_off():
    children = plan_children(WorkerSettings(model="m", workers_per_device=3), ["cpu"], cores=2)
    assert all(c.name == "" and c.metrics_port == 0 and c.health_port == 0 for c in children)
    assert {c.decode_threads for c in children} == {1}  # never below one


def test_the_pods_cpus_are_split_between_the_children_not_the_nodes_cores():
    # Kubernetes gives a pod 8 CPUs (WORKER_CPUS from requests.cpu) on a 64-core node
    pod = WorkerSettings(model="m", workers_per_device=2, cpus=8)
    children = plan_children(pod, ["cuda:0"], cores=64)
    assert {(c.decode_threads, c.torch_threads) for c in children} == {(4, 4)}
    (alone,) = plan_children(WorkerSettings(model="m", cpus=8), ["cuda:0"], cores=64)
    assert (alone.decode_threads, alone.torch_threads) == (8, 8)  # one process: all of the pod's, not 64
    explicit = WorkerSettings(model="m", workers_per_device=2, cpus=8, decode_threads=6)
    assert {c.decode_threads for c in plan_children(explicit, ["cuda:0"], cores=64)} == {6}  # explicit wins


def test_the_children_on_one_device_share_a_reload_lock_and_other_devices_have_their_own():
    children = plan_children(WorkerSettings(model="m", workers_per_device=2), ["cuda:0", "cuda:1"], 16, "/run/x")
    assert [c.reload_lock for c in children] == ["/run/x/cuda0.reload.lock"] * 2 + ["/run/x/cuda1.reload.lock"] * 2
    one_each = plan_children(WorkerSettings(model="m"), ["cuda:0", "cuda:1"], 16, "/run/x")
    assert {c.reload_lock for c in one_each} == {""}  # alone on its device: nobody to wait for
    given = WorkerSettings(model="m", workers_per_device=2, reload_lock="/locks/gpu.lock")
    assert {c.reload_lock for c in plan_children(given, ["cuda:0"], 16, "/run/x")} == {"/locks/gpu.lock"}


def test_ports_that_would_meet_are_refused_and_one_port_for_both_stays_valid():
    both = WorkerSettings(model="m", workers_per_device=2, metrics_port=9100, health_port=9100)
    children = plan_children(both, ["cuda:0"], cores=4)
    # the probes are on each child's metrics port; the pod's are answered by the launcher's page on 9100
    assert [(c.metrics_port, c.health_port) for c in children] == [(9101, 0), (9102, 0)]
    close = WorkerSettings(model="m", workers_per_device=2, metrics_port=9100, health_port=9102)
    with pytest.raises(SystemExit, match="ports overlap"):
        plan_children(close, ["cuda:0"], cores=4)  # 9102: child 1's metrics and child 0's probes
    alone = WorkerSettings(model="m", metrics_port=9100, health_port=9100)
    assert [(c.metrics_port, c.health_port) for c in plan_children(alone, ["cuda:0"], cores=4)] == [(9100, 9100)]
