"""Loose placement survives losing every worker (pipeline.placement)."""
import time

import pytest
from distributed import Client, LocalCluster

from pipeline.passes import shard_places
from pipeline.placement import PLUGIN_NAME, loose_placement


@pytest.fixture
def cluster_client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield cluster, client


def _lose_every_worker(cluster, client):
    cluster.scale(0)
    end = time.monotonic() + 30
    while client.nthreads() and time.monotonic() < end:
        time.sleep(0.05)
    assert not client.nthreads()


def test_a_loosely_placed_task_runs_on_a_new_worker_after_every_worker_went(cluster_client):
    """Without the plugin distributed keeps the task in no-worker for ever (its old worker never returns)."""
    cluster, client = cluster_client
    place = shard_places(client, 1)[0]  # registers the plugin and names the only worker
    assert place["allow_other_workers"] and PLUGIN_NAME in cluster.scheduler.plugins
    _lose_every_worker(cluster, client)
    loose = client.submit(sum, [1, 2], pure=False, **place)
    strict = client.submit(sum, [1, 3], pure=False, workers=place["workers"])
    end = time.monotonic() + 30
    state = lambda future: getattr(cluster.scheduler.tasks.get(future.key), "state", None)  # noqa: E731
    while {state(loose), state(strict)} != {"no-worker"} and time.monotonic() < end:
        time.sleep(0.05)
    assert state(loose) == state(strict) == "no-worker"
    cluster.scale(1)
    assert loose.result(timeout=60) == 3
    assert state(strict) == "no-worker"  # a strict restriction is left alone


def test_no_placement_when_the_scheduler_refuses_the_plugin():
    class Refusing:
        def register_plugin(self, plugin):
            raise RuntimeError("remote scheduler cannot import pipeline")

        def nthreads(self):
            return {"tcp://a:1": 1, "tcp://b:1": 1}

    client = Refusing()
    assert loose_placement(client) is False
    assert shard_places(client, 3) == [{}, {}, {}]
