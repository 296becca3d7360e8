"""Batch clusters: job scripts rendered from jobqueue.yaml, TLS, clear errors, shared-storage checks,
and end to end against a real SLURM (``.ci/slurm-up.sh``; PBS through the shims in ``tests/shims``)."""
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cluster import check_worker_access, connect, jobqueue_cluster, load_jobqueue_config
from solvers.errors import InputError
from storage.data import write_data
from tests.batch import _gone_from_squeue, _jobqueue_yaml, _squeue, needs_slurm

SHIMS = Path(__file__).resolve().parent / "shims"
HIDDEN, ITERATIONS, CHUNK_ROWS = 16, 3, 500


@pytest.fixture
def loopback(monkeypatch, tmp_path):
    """Use the project's jobqueue.yaml, with the scheduler on the loopback interface and certificates in tmp."""
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__INTERFACE", "lo")
    monkeypatch.setenv("DASK_JOBQUEUE__PBS__INTERFACE", "lo")
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__SHARED_TEMP_DIRECTORY", str(tmp_path / "tls"))
    monkeypatch.setenv("DASK_JOBQUEUE__PBS__SHARED_TEMP_DIRECTORY", str(tmp_path / "tls"))
    return tmp_path


# ---------------------------------------------------------------- job scripts, no batch system needed
def test_slurm_job_script_from_jobqueue_yaml(loopback):
    with jobqueue_cluster("slurm", load_jobqueue_config(), dashboard_address="localhost:0") as cluster:
        script = cluster.job_script()
    for line in ["#SBATCH -J dask-worker", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=4G", "#SBATCH -t 01:00:00"]:
        assert line in script
    command = script.splitlines()[-1]
    assert "distributed.cli.dask_worker tls://127.0.0.1:" in command
    assert "--nthreads 1 --memory-limit 3.60GiB" in command and "--lifetime 57m --lifetime-stagger 1m" in command
    assert "--interface lo" in command and "--tls-key" in command
    certificates = list((loopback / "tls").iterdir())
    assert not certificates  # temporary certificates disappear with the cluster


def test_pbs_job_script_from_jobqueue_yaml(loopback):
    with jobqueue_cluster("pbs", load_jobqueue_config(), dashboard_address="localhost:0") as cluster:
        script = cluster.job_script()
        keys = [p for p in (loopback / "tls").rglob("*") if ".key." in p.name]
        assert keys and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
    for line in ["#PBS -N dask-worker", "#PBS -l select=1:ncpus=1:mem=4096MB", "#PBS -l walltime=01:00:00"]:
        assert line in script
    assert "tls://127.0.0.1:" in script and "--protocol tls://" in script


def test_user_dask_config_overrides_the_file(loopback, monkeypatch):
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__WALLTIME", "00:05:00")
    conf = load_jobqueue_config()
    assert conf["jobqueue"]["slurm"]["walltime"] == "00:05:00" and conf["jobqueue"]["slurm"]["memory"] == "4GiB"


def test_dry_run_prints_the_job_script_and_exits_0(loopback, capsys):
    from pipeline.evaluate import main

    rc = main(["--store", "no-such-run.zarr", "--data", "no-such-data.zarr", "--cluster", "pbs", "--dry-run",
               "--dashboard-address", "localhost:0"])
    assert rc == 0
    assert "#PBS -l walltime=01:00:00" in capsys.readouterr().out


def test_scheduler_speaks_tls_only_and_dashboard_is_local(loopback):
    from distributed import Client

    with jobqueue_cluster("slurm", load_jobqueue_config(), dashboard_address="localhost:0") as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout="3s")
        with Client(cluster, timeout="10s") as client:  # the cluster's own certificates work
            assert client.scheduler.address == address
        sockets = cluster.scheduler.http_server._sockets.values()
        assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}


@pytest.mark.parametrize("kwargs,message", [
    ({"cluster": "local", "jobs": 2}, "--jobs and --adapt size batch clusters"),
    ({"cluster": "slurm", "adapt": (3, 1)}, "expected 1 <= MIN <= MAX"),
    ({"cluster": "local", "dry_run": True}, "needs --cluster slurm or pbs"),
    ({"cluster": "condor"}, "expected 'local', 'slurm', 'pbs'"),
])
def test_bad_cluster_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        with connect(**kwargs):
            pass


def test_missing_submit_command_is_a_clear_error(loopback, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="'sbatch', which is not on PATH"):
        with connect("slurm"):
            pass


def test_config_typo_and_missing_interface(tmp_path, monkeypatch):
    bad = tmp_path / "typo.yaml"
    bad.write_text("jobqueue:\n  slurm:\n    wallclock: '01:00:00'\n")
    with pytest.raises(InputError, match="unknown key.*wallclock"):
        load_jobqueue_config(bad)
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__INTERFACE", "ib7")
    with pytest.raises(InputError, match="interface is 'ib7'"):
        with jobqueue_cluster("slurm", load_jobqueue_config(), dashboard_address="localhost:0"):
            pass


def test_a_scheduler_host_that_is_not_this_machine_names_the_setting_and_the_os_error(tmp_path):
    """audit17: jobqueue.yaml's scheduler-options host not an address of this machine was 'could not start the slurm
    cluster's scheduler: cannot get address of non-running Server'; now the setting and the OSError are named."""
    config = tmp_path / "jq.yaml"
    config.write_text("jobqueue:\n  slurm:\n    cores: 1\n    memory: 1GiB\n"
                      "    scheduler-options:\n      host: 10.255.255.1\n")
    with pytest.raises(InputError, match=r"scheduler-options \{'host': '10.255.255.1'\}: .*host must be an address "
                                         r"of this machine.*: Cannot assign requested address"):
        with jobqueue_cluster("slurm", load_jobqueue_config(config), dashboard_address="localhost:0"):
            pass


def test_workers_that_never_arrive_time_out_with_progress(loopback, monkeypatch, tmp_path):
    """A queue that accepts jobs but never runs them: progress lines, then an error naming the jobs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    (fake / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/cancelled\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    lines = []
    with pytest.raises(InputError, match=r"only 0 of 2 slurm workers connected within 2 s \(job 4242"):
        with connect("slurm", jobs=2, worker_timeout=2, dashboard_address="localhost:0", report=lines.append):
            pass
    assert any("waiting for 2 workers" in line for line in lines)
    assert (tmp_path / "cancelled").read_text().split() == ["4242", "4242"]  # jobs cancelled on failure


# ---------------------------------------------------------------- shared storage (issue 6.6)
def test_check_worker_access(client, tmp_path):
    (tmp_path / "data.zarr").mkdir()
    check_worker_access(client, [tmp_path / "data.zarr"], [tmp_path])
    with pytest.raises(InputError) as err:
        check_worker_access(client, [tmp_path / "missing.zarr"], [tmp_path / "no-dir"])
    message = str(err.value)
    assert f"{tmp_path / 'missing.zarr'} does not exist for 2 of 2 workers" in message
    assert f"{tmp_path / 'no-dir'} does not exist" in message
    assert all(w in message for w in client.nthreads()) and "shared storage" in message


def test_train_on_an_empty_cluster_waits_for_a_worker(tmp_path):
    """A batch cluster is empty for a moment while jobs whose workers' lifetimes ended are replaced: train waits for
    the next worker (here a local cluster scaled from 0 to 1 after 1.5 s) instead of stopping at once."""
    import threading

    from distributed import Client, LocalCluster

    from pipeline.training import train
    from solvers.config import TrainConfig
    from tests.conftest import make_data

    X, y = make_data(n=400, d=5)
    write_data(tmp_path / "data.zarr", X, y, chunk_rows=200)
    lines = []
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        timer = threading.Timer(1.5, cluster.scale, (1,))
        timer.start()
        t0 = time.monotonic()
        result = train(c, store=tmp_path / "run.zarr", data=tmp_path / "data.zarr", chunk_rows=200,
                       config=TrainConfig(hidden=(4,), iterations=1), report=lines.append)
        timer.join()
    assert time.monotonic() - t0 >= 1.5  # it waited for the worker
    assert result.store.committed_iteration() == 1


def test_empty_cluster_wait_ends_in_one_clear_line(tmp_path):
    """No worker within the timeout: one error line, the batch cluster's naming its --worker-timeout and the queue."""
    from types import SimpleNamespace

    from distributed import Client, LocalCluster

    from pipeline.cluster import ClusterFailure, wait_for_a_worker

    (tmp_path / "data.zarr").mkdir()
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as c:
        t0 = time.monotonic()
        with pytest.raises(InputError, match=r"^the cluster has had no worker for 1 s: its LocalCluster started none"):
            check_worker_access(c, [tmp_path / "data.zarr"], [tmp_path], timeout=1.0)
        assert 1.0 <= time.monotonic() - t0 < 10
        lines = []
        c.admm_supervisor = SimpleNamespace(timeout=1.2, kind="slurm", fatal=None, report=lines.append,
                                            situation=lambda: "job 7 PENDING (Resources)")
        with pytest.raises(ClusterFailure) as err:
            wait_for_a_worker(c)  # the supervised cluster's --worker-timeout
        assert str(err.value) == "slurm: no worker for 1 s (--worker-timeout): job 7 PENDING (Resources)"
        assert lines == [] or lines[0].startswith("slurm: no worker connected; waiting for one")


def test_a_cluster_nobody_supervises_waits_60_s_for_a_worker_not_600_and_says_how_to_go_on():
    """audit17 (rel16's leftover): a scheduler address with no worker (or an estimator's client=) waited the batch
    clusters' 600 s. Nobody here starts its workers: 60 s by default, --worker-timeout (connect's worker_timeout) or
    dask config admm-dask.worker-timeout to wait longer, and the lines say how to start a worker."""
    from types import SimpleNamespace

    import dask

    from pipeline.cluster import _worker_timeout, wait_for_a_worker

    def empty(**extra):
        def wait(n, timeout):
            time.sleep(timeout)
            raise TimeoutError
        return SimpleNamespace(nthreads=dict, wait_for_workers=wait, **extra)

    assert _worker_timeout(empty()) == 60.0
    assert _worker_timeout(empty(admm_worker_timeout=900.0)) == 900.0
    with dask.config.set({"admm-dask.worker-timeout": 120}):
        assert _worker_timeout(empty()) == 120.0
    lines = []
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"^the cluster has had no worker for 1 s: start workers for its scheduler "
                                         r"\(dask worker tcp://10.1.2.3:8786\), or wait longer with --worker-timeout SECONDS"):
        wait_for_a_worker(empty(admm_worker_timeout=1.2, admm_address="tcp://10.1.2.3:8786"), report=lines.append)
    assert time.monotonic() - t0 < 10 and lines == []


def test_a_cluster_something_here_starts_workers_for_keeps_the_600_s_wait_and_no_dask_worker_advice():
    """review17 M3: the 60 s wait is for a scheduler nobody here starts workers for (an address or scheduler file, a
    Client with no cluster object). The local cluster this process starts (its nannies restart workers, slowly under
    load) and a user's cluster object given to an estimator (adaptive, dask-jobqueue: workers requested, not yet
    running) keep the 600 s, even with dask config set, and their line does not say to run `dask worker`."""
    from types import SimpleNamespace

    import dask

    from pipeline.cluster import DEFAULT_WORKER_TIMEOUT, _worker_timeout, wait_for_a_worker

    class SLURMCluster:  # stands for any cluster object (LocalCluster, an adaptive dask-jobqueue cluster)
        pass

    def empty(**extra):
        def wait(n, timeout):
            time.sleep(timeout)
            raise TimeoutError
        return SimpleNamespace(nthreads=dict, wait_for_workers=wait,
                               scheduler=SimpleNamespace(address="tcp://127.0.0.1:40001"), **extra)

    assert DEFAULT_WORKER_TIMEOUT == 600.0
    assert _worker_timeout(empty(cluster=SLURMCluster())) == 600.0
    with dask.config.set({"admm-dask.worker-timeout": 120}):
        assert _worker_timeout(empty(cluster=SLURMCluster())) == 600.0
        assert _worker_timeout(empty(cluster=None)) == 120.0
    assert _worker_timeout(empty(cluster=SLURMCluster(), admm_address="tcp://10.1.2.3:8786")) == 60.0
    with pytest.raises(InputError) as err:
        wait_for_a_worker(empty(cluster=SLURMCluster()), timeout=0.3)
    assert "dask worker" not in str(err.value) and "its SLURMCluster started none" in str(err.value)


# ---------------------------------------------------------------- a real SLURM
@pytest.fixture(scope="module")
def small_run(tmp_path_factory, client):
    """2000×8 data and the weights that 3 iterations on the local cluster give."""
    from pipeline.training import train
    from solvers.config import TrainConfig
    from pipeline.model import load_network

    d = tmp_path_factory.mktemp("slurm-data")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 8)).astype(np.float32)
    write_data(d / "data.zarr", X, (X[:, 0] * X[:, 1] > 0).astype(int), chunk_rows=CHUNK_ROWS)

    def reference(iterations):
        store = d / f"local-{iterations}.zarr"
        if not store.exists():
            train(client, store=store, data=d / "data.zarr", chunk_rows=CHUNK_ROWS, report=lambda line: None,
                  config=TrainConfig(hidden=(HIDDEN,), iterations=iterations))
        return load_network(store).weights

    return d / "data.zarr", reference


def _train_cli(monkeypatch, tmp_path, data, *flags, iterations=ITERATIONS):
    """Run ``python -m pipeline.train`` in-process; return its exit status, final weights and what the spy saw."""
    import pipeline.training
    from pipeline.train import main
    from pipeline.model import load_network

    seen = {}
    real_train = pipeline.training.train

    def spy(client, **kwargs):
        seen["address"] = client.scheduler.address
        seen["job_ids"] = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        seen["squeue"] = _squeue()
        from pipeline.dashboard import is_installed

        seen["training_page"] = client.run_on_scheduler(is_installed)  # the /training page (issue 23)
        return real_train(client, **kwargs)

    monkeypatch.setattr(pipeline.training, "train", spy)
    store = tmp_path / "run.zarr"
    rc = main(["--data", str(data), "--store", str(store), "--hidden", str(HIDDEN), "--iterations", str(iterations),
               "--chunk-rows", str(CHUNK_ROWS), "--dashboard-address", "localhost:0", "--worker-timeout", "120",
               *flags])
    return rc, (load_network(store).weights if rc == 0 else None), seen


@pytest.mark.slurm
@needs_slurm
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_train_on_batch_workers_matches_local(kind, small_run, tmp_path, monkeypatch):
    """--cluster slurm (and pbs through the qsub/qstat/qdel shims): 2 worker jobs, same weights as local."""
    if kind == "pbs":
        monkeypatch.setenv("PATH", f"{SHIMS}{os.pathsep}{os.environ['PATH']}")
    data, reference = small_run
    t0 = time.perf_counter()
    rc, weights, seen = _train_cli(monkeypatch, tmp_path, data, "--cluster", kind, "--jobs", "2",
                                   "--jobqueue-config", str(_jobqueue_yaml(tmp_path)))
    print(f"{kind} end to end: {time.perf_counter() - t0:.1f} s")
    assert rc == 0
    assert seen["address"].startswith("tls://") and seen["training_page"]
    job_ids = set(seen["job_ids"].values())
    assert len(seen["job_ids"]) == 2 and None not in job_ids and len(job_ids) == 2  # one SLURM job per worker
    assert job_ids <= seen["squeue"]  # visible in squeue while training
    assert _gone_from_squeue(job_ids)  # cancelled when training ended
    for w, w_local in zip(weights, reference(ITERATIONS)):
        np.testing.assert_allclose(w, w_local, rtol=1e-5, atol=1e-6)
    if kind == "pbs":  # the jobs went through qsub: the scripts' #PBS lines named them
        assert sorted(p.name.split("-")[0] for p in (tmp_path / "logs").glob("*.out")) == ["dask", "dask"]


@pytest.mark.slurm
@needs_slurm
def test_old_workers_rotate_without_emptying_the_cluster(tmp_path):
    """Workers older than rotate-after (as before a walltime) get a successor job first, then retire;
    a stream of tasks keeps running and the cluster never has fewer workers than asked for, nor more than the
    one successor of the rotation under way (once it grew by a job with every other rotation: 125 s, wk16_s16.md)."""
    config = _jobqueue_yaml(tmp_path, **{"rotate-after": "1s"})
    t0 = time.perf_counter()
    with connect("slurm", jobs=2, jobqueue_config=config, dashboard_address="localhost:0",
                 worker_timeout=120) as client:
        first = set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
        # two rotations, one at a time, each waits for a successor job's worker to start: seconds on a quiet
        # machine, far longer on a loaded one; the loop ends as soon as both are done
        fewest, most, results, end = 2, 2, [], time.monotonic() + 120
        while time.monotonic() < end:
            futures = client.map(lambda i: (time.sleep(0.05), i)[1], range(40 * len(results), 40 * len(results) + 40))
            results.append(sum(client.gather(futures)))
            fewest, most = min(fewest, len(client.nthreads())), max(most, len(client.nthreads()))
            # a worker retiring while the scheduler broadcasts to it closes its comm mid-run: it is leaving, so its
            # answer is not needed (on_error="raise" failed the test with CommClosedError in a fresh-clone CI)
            jobs = set(client.run(lambda: os.environ["SLURM_JOB_ID"], on_error="ignore").values())
            if not jobs & first and len(jobs) == 2:
                break
        assert not jobs & first, "the first two workers were not rotated out within 120 s"
        assert fewest >= 2  # each successor was connected before its predecessor retired
        assert most <= 3 and len(client.cluster.worker_spec) <= 3  # one rotation at a time, none adds a job
        assert results == [sum(range(40 * k, 40 * k + 40)) for k in range(len(results))]
    print(f"rotation: {time.perf_counter() - t0:.1f} s")
    assert _gone_from_squeue(first | jobs)


@pytest.mark.slurm
@needs_slurm
def test_worker_that_reaches_its_lifetime_is_resubmitted(tmp_path):
    """A worker that ends (--lifetime, or walltime) leaves a job slot that the cluster fills again."""
    import dask

    # the lifetime counts from the worker's start: 6 s leave a loaded machine time to connect it first
    config = _jobqueue_yaml(tmp_path, worker_extra_args=["--lifetime", "6s"], **{"rotate-after": None})
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.5s"}), \
            connect("slurm", jobs=1, jobqueue_config=config, dashboard_address="localhost:0",
                    worker_timeout=120) as client:
        first = set(client.run(lambda: os.environ["SLURM_JOB_ID"], on_error="ignore").values())
        seen, end = set(first), time.monotonic() + 120  # ends as soon as the replacement's worker answers
        while seen == first and time.monotonic() < end:
            time.sleep(0.5)
            try:
                seen |= set(client.run(lambda: os.environ["SLURM_JOB_ID"]).values())
            except OSError:  # a worker leaving while we ask
                pass
        assert seen - first, "no new job replaced the worker whose lifetime ended"
        client.wait_for_workers(1, timeout=120)
        assert client.submit(sum, [1, 2]).result(timeout=120) == 3
    assert any("worker-lifetime-reached" in p.read_text() for p in (tmp_path / "logs").glob("*.err"))
    assert _gone_from_squeue(seen)
