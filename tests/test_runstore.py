"""storage/runstore.py directly: the stored metrics are the numbers the history records; commits round-trip."""
import numpy as np

from storage.runstore import Checkpoint, RunStore, metric_names


def test_metric_names_follow_the_history():
    history = [{"iteration": 1, "seconds": 0.5, "train_accuracy": 0.9, "accepted": True, "note": "text"},
               {"iteration": 2, "seconds": 0.4, "train_accuracy": 0.95, "test_accuracy": 0.9}]
    assert metric_names(history) == ["seconds", "train_accuracy", "accepted", "test_accuracy"]
    assert metric_names([]) == []


def test_commit_round_trips_weights_carry_and_metrics(tmp_path):
    import xarray as xr

    run = RunStore.create(tmp_path / "r.zarr", config={"task": "classification"}, data={"path": "d"},
                          state_widths={"z1": 3}, n_samples=10, chunk_rows=5, classes=np.array([0, 1]),
                          x_mean=np.zeros(2), x_scale=np.ones(2))
    W = [np.arange(6.0).reshape(3, 2), np.ones((1, 4))]
    history = [{"iteration": 1, "seconds": 0.1, "train_accuracy": 0.5},
               {"iteration": 2, "seconds": 0.2, "train_accuracy": 0.75, "test_accuracy": 0.7}]
    run.commit(Checkpoint(2, W, {"gram": np.eye(2)}), history, target_iterations=5)
    again = RunStore.open(tmp_path / "r.zarr")
    ck = again.load_checkpoint()
    assert ck.iteration == 2 and all(np.array_equal(a, b) for a, b in zip(ck.weights, W))
    np.testing.assert_array_equal(ck.carry["gram"], np.eye(2))
    assert again.manifest()["target_iterations"] == 5 and again.manifest()["history"] == history
    ds = xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False)
    assert sorted(ds.data_vars) == ["seconds", "test_accuracy", "train_accuracy"]
    np.testing.assert_array_equal(ds.test_accuracy.values, [np.nan, 0.7])
