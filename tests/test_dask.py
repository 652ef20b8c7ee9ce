"""fscnn.dask.predict: results equal the in-process model's on the threaded scheduler and on a
2-process LocalCluster, the model travels once per worker, each task's kernel threads stay
within the worker's, and bad inputs are refused before anything is sent."""
import time

import numpy as np
import pytest

import fscnn
from fscnn import nn

from conftest import assert_close, import_or_skip

da = import_or_skip("dask.array", 'pip install "fscnn[dask]"')
distributed = import_or_skip("distributed", 'pip install "fscnn[dask]"')
import fscnn.dask  # noqa: E402  (after the skip)

SHAPE = (12, 3, 16, 16)


class ThreadProbe(nn.Module):
    """Its model's output with one more column: the kernel threads fscnn used for the call
    (module-level, so that spawned workers unpickle it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        used = np.full((out.shape[0], 1), fscnn.get_num_threads(), np.float32)
        return np.concatenate([out, used], axis=1)


class Flattening(nn.Module):
    """Flattens with ``x.reshape(len(x), -1)``, which NumPy refuses on an empty batch."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fc = nn.Linear(32 * 8 * 8, 5)

    def forward(self, x):
        x = self.model(x)
        return self.fc(x.reshape(x.shape[0], -1))


def _model(classes=True):
    nn.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()]
    if classes:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    model = nn.Sequential(*layers).eval()
    fscnn.prune(model, 0.8, inplace=True)
    return model


@pytest.fixture(scope="module")
def client():
    # one 2-process cluster for the module: starting one costs seconds
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def images(rng):
    return rng.random(SHAPE, dtype=np.float32)


def _check(result, model, x, chunks):
    assert isinstance(result, da.Array) and result.dtype == np.float32
    assert result.chunks[0] == chunks
    out = result.compute()
    expected = model(x)
    assert out.shape == expected.shape
    assert_close(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_threaded_scheduler_matches_the_model(images):
    model = _model()
    x = da.from_array(images, chunks=(4, -1, -1, -1))
    with fscnn.dask.dask.config.set(scheduler="threads"):
        _check(fscnn.dask.predict(model, x), model, images, (4, 4, 4))
        # float64 input, rechunked along N; an image-shaped (4-D) output
        conv = _model(classes=False)
        y = fscnn.dask.predict(conv, x.astype(np.float64), batch_size=5)
        assert y.chunks == ((5, 5, 2), (32,), (8,), (8,))
        _check(y, conv, images, (5, 5, 2))


def test_a_model_that_cannot_take_an_empty_batch(images):
    model = Flattening(_model(classes=False))
    x = da.from_array(images, chunks=(5, -1, -1, -1))
    with fscnn.dask.dask.config.set(scheduler="threads"):
        _check(fscnn.dask.predict(model, x), model, images, (5, 5, 2))


def test_threaded_scheduler_shares_the_threads(images):
    probe = ThreadProbe(_model())
    x = da.from_array(images, chunks=(3, -1, -1, -1))
    total = fscnn.get_num_threads()
    for workers in (1, 2):
        with fscnn.dask.dask.config.set(scheduler="threads", num_workers=workers):
            used = fscnn.dask.predict(probe, x).compute()[:, -1]
        assert set(used) == {max(1, total // workers)}
    assert fscnn.get_num_threads() == total  # the process's setting is left alone


def test_distributed_matches_and_ships_the_model_once_per_worker(client, images):
    model = _model()
    x = da.from_array(images, chunks=(2, -1, -1, -1))
    first = fscnn.dask.predict(model, x)
    _check(first, model, images, (2,) * 6)
    # past the active memory manager's interval (2 s), which dropped the extra replicas of a
    # scattered model, so that the next compute copied it again (once in ~8 runs here)
    time.sleep(2.5)
    first.compute()
    _check(fscnn.dask.predict(model, x), model, images, (2,) * 6)  # reuses the delivered copy
    token = fscnn.dask._token(model)
    arrivals = client.run(fscnn.dask.arrivals)
    assert len(arrivals) == 2
    assert [counts[token] for counts in arrivals.values()] == [1, 1]


def test_distributed_tasks_use_one_thread_per_worker_thread(client, images):
    probe = ThreadProbe(_model())
    used = fscnn.dask.predict(probe, da.from_array(images, chunks=(2, -1, -1, -1))).compute()
    assert set(used[:, -1]) == {1}


def test_a_changed_model_is_shipped_again(client, images):
    model = _model()
    x = da.from_array(images, chunks=(6, -1, -1, -1))
    fscnn.dask.predict(model, x).compute()
    before = fscnn.dask._token(model)
    model[0].bias = model[0].bias + 1
    assert fscnn.dask._token(model) != before
    _check(fscnn.dask.predict(model, x), model, images, (6, 6))


@pytest.mark.parametrize("make,error,match", [
    (lambda x: x.compute(), TypeError, "must be a dask array"),
    (lambda x: x[0], ValueError, "must be 4-D"),
    (lambda x: x.rechunk({0: 4, 1: 1}), ValueError, r"chunked along axis 1 \(C"),
    (lambda x: x.rechunk({0: 4, 3: 8}), ValueError, r"chunked along axis 3 \(W"),
    (lambda x: (x * 255).astype(np.uint8), TypeError, "must hold floats"),
    (lambda x: x[:, :2], nn.LayerInputError, "expected 3 input channels"),
])
def test_bad_inputs_are_refused_before_anything_is_sent(client, images, make, error, match):
    model = _model()
    with pytest.raises(error, match=match):
        fscnn.dask.predict(model, make(da.from_array(images, chunks=(4, -1, -1, -1))))
    token = fscnn.dask._token(model)
    assert all(token not in counts for counts in client.run(fscnn.dask.arrivals).values())


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(images, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        fscnn.dask.predict(_model(), da.from_array(images), batch_size=batch_size)


def test_model_must_be_an_fscnn_module(images):
    with pytest.raises(TypeError, match="model must be an fscnn.nn.Module"):
        fscnn.dask.predict(lambda x: x, da.from_array(images))
