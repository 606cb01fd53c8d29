"""Data that does not fit in memory: an image folder decoded in parallel into a cached memory map,
streamed through a DataLoader with workers, trains bit-identically to the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dlkit import ModelRepository, load_dataset, train
from dlkit.data.streaming import RowArray, cache_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 12x12 colour images: bright squares and dark ones, with noise."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for label, level in (("bright", 200), ("dark", 60)):
        (root / label).mkdir()
        for i in range(40):
            a = np.clip(rng.normal(level, 40, size=(12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a, "RGB").save(root / label / f"{i:03d}.png")
    return root


def test_streamed_splits_equal_the_in_memory_ones(folder, tmp_path):
    with cache_dir(tmp_path / "cache"):
        streamed = load_dataset(str(folder), {"stream": True}, 3)
    in_memory = load_dataset(str(folder), {"stream": False}, 3)
    assert isinstance(streamed.x_train, RowArray) and isinstance(in_memory.x_train, np.ndarray)
    assert all(isinstance(streamed.split(p)[0].base, np.memmap) for p in ("train", "val", "test"))  # lazy views
    for part in ("train", "val", "test"):
        xs, ys = streamed.split(part)
        xm, ym = in_memory.split(part)
        assert xs.shape == xm.shape and np.array_equal(np.asarray(xs), xm) and np.array_equal(ys, ym)
    assert np.array_equal(streamed.x_train[[5, 1, 3]], in_memory.x_train[[5, 1, 3]])  # order kept
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 1


def test_a_changed_folder_gets_a_new_cache(folder, tmp_path):
    with cache_dir(tmp_path / "cache"):
        load_dataset(str(folder), {"stream": True}, 0)
        before = {p.name for p in (tmp_path / "cache").glob("images-*.npy")}
        extra = folder / "dark" / "999.png"
        Image.fromarray(np.full((12, 12, 3), 10, np.uint8), "RGB").save(extra)
        try:
            ds = load_dataset(str(folder), {"stream": True}, 0)
            after = {p.name for p in (tmp_path / "cache").glob("images-*.npy")}
        finally:
            extra.unlink()
    assert len(before) == len(after) == 1 and before != after  # the old cache is gone, not kept beside
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 81


def test_streamed_training_is_bit_identical_to_in_memory(folder, tmp_path):
    results = {}
    for stream, workers in ((False, 0), (True, 2)):
        repo = ModelRepository(tmp_path / f"repo-{stream}")
        results[stream] = train("cnn", repo, data=str(folder), epochs=2, quiet=True,
                                sets=[f"data.stream={str(stream).lower()}", f"workers={workers}",
                                      "channels=[8]", "hidden=16", "channels_last=false"])
    import safetensors.numpy

    a = safetensors.numpy.load_file(str(results[False].version.weights_path))
    b = safetensors.numpy.load_file(str(results[True].version.weights_path))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert results[False].metrics["test_accuracy"] == results[True].metrics["test_accuracy"]
    assert list((tmp_path / "repo-True" / ".cache").glob("images-*.npy"))  # the cache lives in the repository


def test_streamed_training_never_reads_a_whole_split(folder, tmp_path, monkeypatch):
    """Memory independent of the data set's size: training, each epoch's validation, the final
    scores and the input statistics read a streamed split a bounded batch of rows at a time, and
    never convert one whole (a regression to ``np.asarray(x_val)`` or to one evaluation batch per
    split fails here, deterministically, without measuring memory)."""
    from dlkit.data import input_stats, streaming
    from dlkit.training import supervised

    row = 3 * 12 * 12
    monkeypatch.setattr(supervised, "EVAL_BATCH_BYTES", 4 * row * 4)  # evaluation: 4 rows a batch
    monkeypatch.setattr(input_stats, "CHUNK_BYTES", 4 * row * 8)  # statistics: 4 rows a chunk
    reads = []
    real = streaming.read_rows

    def recording(base, rows):
        reads.append(len(rows))
        return real(base, rows)

    def whole(self, *args, **kwargs):
        raise AssertionError(f"a streamed split of {len(self)} rows was converted whole")

    monkeypatch.setattr(streaming, "read_rows", recording)
    monkeypatch.setattr(RowArray, "__array__", whole)
    result = train("cnn", ModelRepository(tmp_path / "repo"), data=str(folder), epochs=2, quiet=True,
                   sets=["data.stream=true", "data.val=0.2", "workers=0", "batch_size=8", "channels=[8]",
                         "hidden=16"])
    sizes = result.version.meta["data"]["sizes"]
    assert min(sizes.values()) == 16  # every split is larger than any one read
    assert reads and max(reads) <= 8, sorted(set(reads))
    assert sum(reads) >= 2 * sizes["train"] + 2 * sizes["val"] + sizes["test"]  # and each was read, in batches


def test_rows_come_from_the_file_a_map_maps_even_after_it_was_replaced(tmp_path):
    """``read_rows`` preads through a descriptor kept per map: a cache file replaced on disk (its
    folder changed) is read anew, the old map keeps reading its own file, and each descriptor
    closes with its map (one kept per path read the replaced file's stale rows)."""
    import gc
    import os

    from dlkit.data import streaming

    path = tmp_path / "cache.npy"
    np.save(path, np.arange(12, dtype=np.uint8).reshape(4, 3))
    old = np.load(path, mmap_mode="r")
    assert np.array_equal(streaming.read_rows(old, np.array([1, 2])), [[3, 4, 5], [6, 7, 8]])
    np.save(tmp_path / "new.npy", np.arange(100, 112, dtype=np.uint8).reshape(4, 3))
    os.replace(tmp_path / "new.npy", path)
    new = np.load(path, mmap_mode="r")
    assert np.array_equal(streaming.read_rows(new, np.array([0, 3])), [[100, 101, 102], [109, 110, 111]])
    assert np.array_equal(streaming.read_rows(old, np.array([0])), [[0, 1, 2]])
    opened = set(streaming._FDS.values())
    del old, new
    gc.collect()
    assert len(opened) == 2 and not opened & set(streaming._FDS.values())


def test_channels_last_is_measured_once_and_recorded(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    first = train("cnn", repo, epochs=1, quiet=True, name="a", sets=["channels=[8]", "hidden=16"])
    cached = (tmp_path / "repo" / ".cache" / "channels_last.json")
    assert cached.is_file()
    import json

    (key, record), = json.loads(cached.read_text()).items()
    assert record["channels_last"] == first.metrics["channels_last"] and record["nchw_s"] > 0
    second = train("cnn", repo, epochs=1, quiet=True, name="b", sets=["channels=[8]", "hidden=16"])
    assert second.metrics["channels_last"] == first.metrics["channels_last"]
    import safetensors.numpy

    a = safetensors.numpy.load_file(str(first.version.weights_path))
    b = safetensors.numpy.load_file(str(second.version.weights_path))
    assert all(np.array_equal(a[k], b[k]) for k in a)  # measuring left the random stream alone


def test_evaluation_gives_freed_heap_memory_back_every_few_batches(monkeypatch):
    """glibc keeps what evaluation batches free once training raised its mmap threshold (+170-370
    MiB over a 5,000-image split, growing with it, benchmarks/bench_streaming.py): model_outputs
    trims the heap every TRIM_EVERY batches, and on this (glibc) machine the trim is real."""
    import torch

    from dlkit.training import heap, supervised

    assert heap.trim_heap() is True
    calls = []
    monkeypatch.setattr(supervised, "trim_heap", lambda: calls.append(1))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    x = np.zeros((40, 3, 2, 2), np.float32)
    out = supervised.model_outputs(model, x, batch_size=2)  # 20 batches
    assert out.shape == (40, 2) and len(calls) == 20 // heap.TRIM_EVERY
