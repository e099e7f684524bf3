"""Own data at scale: the feature cache's size check and the proxy's class-balanced subset."""
import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from nasfpn.backbones import build_backbone
from nasfpn.cache import (GB, SPARE_BYTES, CacheSpaceError, FeatureCache, cache_folder, cache_key,
                          estimate_cache_bytes, feature_shapes)
from nasfpn.cli import main
from nasfpn.data import DetectionDataset, split_ids, synthetic_dataset
from nasfpn.data.split import subset_ids
from nasfpn.search.config import search_config
from nasfpn.task import BackboneConfig, DataConfig, prepare_task, proxy_subset
from nasfpn.train import ProxyConfig

PROXY = ProxyConfig(image_size=128, width=8, head_depth=1, steps=1, batch_size=2)
NO_WARMUP = BackboneConfig(name="resnet18", warmup_steps=0)  # a random backbone: the caches' size does not depend on its weights


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """12 synthetic images: 10 train, 2 val by the default split."""
    return synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=12, image_size=128, seed=3)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("resnet18", probe_size=128)


def _data(synthetic, **fields) -> DataConfig:
    annotations, images = synthetic
    # 0.2 given: 10 train / 2 val (without it a set this small holds out 0.4)
    return DataConfig(annotations=str(annotations), images=str(images), **{"val_fraction": 0.2, **fields})


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10 * free, used=9 * free, free=free))


# --- the size check ---

def test_the_estimate_matches_a_real_cache(synthetic, backbone, tmp_path):
    dataset = DetectionDataset(*synthetic, 128)
    cache = FeatureCache.build(backbone, dataset, tmp_path, flips=(False, True))
    written = sum(f.stat().st_size for f in cache.folder.iterdir())
    estimate = estimate_cache_bytes(feature_shapes(backbone, 128), dataset, (False, True))
    assert estimate == pytest.approx(written, rel=0.03)
    # resnet18 at 128 px: C3..C5 of 128x16x16 + 256x8x8 + 512x4x4 float16 values an image and flip
    assert feature_shapes(backbone, 128) == {3: (128, 16, 16), 4: (256, 8, 8), 5: (512, 4, 4)}


def test_a_cache_over_the_free_space_is_refused_before_anything_is_written(synthetic, tmp_path, monkeypatch):
    _free(monkeypatch, SPARE_BYTES + 10 ** 6)  # 1 MB beyond the spare: the caches need about 2.5 MB
    with pytest.raises(CacheSpaceError) as caught:
        prepare_task(_data(synthetic), NO_WARMUP, PROXY, cache_root=tmp_path)
    assert not (tmp_path / "features").exists()
    message = str(caught.value)
    assert "\n" not in message
    for part in ("10 images x 2 flips, 2 images x 1 flip", "resnet18 at 128 px is 0.11 MB an image and flip",
                 f"has {(SPARE_BYTES + 10 ** 6) / GB:.1f} GB free", "keeping 1 GiB spare", "nothing was written",
                 "proxy.image_size", "data.max_train_images", "about 4 images with both flips fit", "--cache-dir",
                 "backbone.cache: false or --no-cache"):
        assert part in message, part
    assert "would take about 0.0025" in message  # 10 x 2 + 2 x 1 image-flips of 0.11 MB, and their targets


def test_the_cap_refuses_too_and_a_cache_that_fits_is_built(synthetic, tmp_path, monkeypatch):
    with pytest.raises(CacheSpaceError, match=r"over data.cache_max_gb 0.001; .*a larger data.cache_max_gb"):
        prepare_task(_data(synthetic, cache_max_gb=0.001), NO_WARMUP, PROXY, cache_root=tmp_path)
    assert not (tmp_path / "features").exists()
    task = prepare_task(_data(synthetic, cache_max_gb=0.01), NO_WARMUP, PROXY, cache_root=tmp_path)
    assert len(task.train_cache) == 10 and len(task.val_cache) == 2
    _free(monkeypatch, 0)  # a cache already there needs no room: a full disk does not stop its reuse
    again = prepare_task(_data(synthetic, cache_max_gb=0.001), NO_WARMUP, PROXY, cache_root=tmp_path)
    assert again.train_cache.folder == task.train_cache.folder


def test_the_refusal_comes_before_a_warm_up(synthetic, tmp_path):
    # A warm-up takes minutes on a real set: waiting for it only to be refused is what not to do.
    with pytest.raises(CacheSpaceError):
        prepare_task(_data(synthetic, cache_max_gb=0.001), BackboneConfig(name="resnet18", warmup_steps=2), PROXY, cache_root=tmp_path)
    assert not (tmp_path / "warmup").exists() and not (tmp_path / "features").exists()


def test_the_command_line_refuses_in_one_line_with_exit_2(synthetic, tmp_path, capsys):
    annotations, images = synthetic
    config = tmp_path / "big.yaml"
    config.write_text(f"data: {{annotations: {annotations}, images: {images}, cache_max_gb: 0.001}}\n"
                      "backbone: {name: resnet18, warmup_steps: 0}\nproxy: {image_size: 128, width: 8, head_depth: 1}\n")
    assert main(["train", "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasfpn train: error: the feature cache would take about") and "\n" not in err
    assert not (tmp_path / "cache" / "features").exists()


# --- the proxy subset ---

def _skewed() -> dict:
    """90 images of class 0, 9 of class 1 (with class 0 too), 1 of class 2, 10 with no box."""
    classes = {i: [0] for i in range(90)}
    classes.update({100 + i: [1, 0] for i in range(9)})
    classes[200] = [2]
    classes.update({300 + i: [] for i in range(10)})
    return classes


def test_the_subset_is_balanced_over_classes_and_of_the_asked_size():
    classes = _skewed()
    subset = subset_ids(classes, 12, seed=0)
    assert len(subset) == 12 and subset == sorted(subset)
    per_class = Counter(c for i in subset for c in set(classes[i]))
    assert per_class[2] == 1 and per_class[1] >= 4  # a random 12 of 110 would most often miss class 2
    assert not any(300 <= i < 310 for i in subset)  # images with no box only once the others run out
    everything_with_boxes = subset_ids(classes, 105, seed=0)
    assert len(everything_with_boxes) == 105 and set(range(90)) <= set(everything_with_boxes)
    assert sum(300 <= i < 310 for i in everything_with_boxes) == 5
    assert subset_ids(classes, 500) == subset_ids(classes, None) == sorted(classes)


def test_the_subset_is_deterministic_and_seeded():
    classes = _skewed()
    assert subset_ids(classes, 12, seed=0) == subset_ids(dict(reversed(list(classes.items()))), 12, seed=0)
    assert subset_ids(classes, 12, seed=0) != subset_ids(classes, 12, seed=1)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        subset_ids(classes, 0)


def test_prepare_task_takes_the_subset_after_the_split(synthetic, tmp_path):
    everything = DetectionDataset(*synthetic, 128)
    train_ids, val_ids = split_ids(everything.image_ids, 0.2, 0)
    task = prepare_task(_data(synthetic, max_train_images=4), NO_WARMUP, PROXY, use_cache=False, cache_root=tmp_path)
    assert len(task.train) == 4 and set(task.train.image_ids) <= set(train_ids)
    assert task.val.image_ids == val_ids  # the held-out split is the same with or without a subset
    assert task.spec["train"]["ids"] == task.train.image_ids  # what every trial rebuilds
    kept = {a["category_id"] for i in task.train.image_ids for a in task.train.coco.imgToAnns[i]}
    assert kept == set(everything.category_ids)  # every class keeps images


def test_the_subset_changes_the_cache_key(synthetic):
    """The key's dataset fingerprint digests every image of the split (file, size, boxes), so a
    subset, or another subset of the same size, keys its own cache without a key of its own."""
    fake = SimpleNamespace(name="resnet18", channels={3: 128, 4: 256, 5: 512})
    dataset = DetectionDataset(*synthetic, 128)
    first, second = (proxy_subset(dataset, 5, seed) for seed in (0, 1))
    assert len(first) == len(second) == 5 and first.image_ids != second.image_ids
    keys = [cache_key(fake, d, (False, True), "random")["dataset"] for d in (dataset, first, second)]
    assert len(set(keys)) == 3
    assert proxy_subset(dataset, None, 0) is dataset and proxy_subset(dataset, 50, 0) is dataset


def test_a_library_upgrade_keys_a_new_cache(synthetic, monkeypatch):
    """torch or torchvision (and timm, for its backbones) of another version may compute other
    features from the same weights: the cache made before is not read."""
    import torch
    import torchvision

    dataset = DetectionDataset(*synthetic, 128)
    resnet = SimpleNamespace(name="resnet18", channels={3: 128, 4: 256, 5: 512})
    before = cache_key(resnet, dataset, (False,), "random")
    assert set(before["libraries"]) == {"torch", "torchvision"}  # timm's version does not matter to it
    for library, version in ((torchvision, "0.0.1"), (torch, "9.9.9+cu999")):
        monkeypatch.setattr(library, "__version__", version)
        after = cache_key(resnet, dataset, (False,), "random")
        assert after["libraries"][library.__name__] == version.split("+")[0]  # a CPU or CUDA build alike
        assert cache_folder(Path("/c"), after) != cache_folder(Path("/c"), before)
    timm = pytest.importorskip("timm")
    lite0 = SimpleNamespace(name="timm:tf_efficientnet_lite0", channels={3: 40, 4: 112, 5: 320})
    with_timm = cache_key(lite0, dataset, (False,), "random")
    monkeypatch.setattr(timm, "__version__", "0.0.1")
    assert with_timm["libraries"]["timm"] != "0.0.1" == cache_key(lite0, dataset, (False,), "random")["libraries"]["timm"]


def test_bad_values_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"data.max_train_images: must be a positive integer or null, got -3"):
        DataConfig(max_train_images=-3)
    with pytest.raises(ValueError, match=r"data.max_val_images: must be a positive integer or null, got 2.5"):
        search_config({"data": {"max_val_images": 2.5}})
    for bad in (0, -1, True, "10"):
        with pytest.raises(ValueError, match=r"data.cache_max_gb: must be a number > 0 or null"):
            DataConfig(cache_max_gb=bad)
    assert DataConfig(max_train_images=5000, max_val_images=500, cache_max_gb=50).cache_max_gb == 50
    # Caught with the config, not when the split is made after the experiment folder exists.
    for bad in (0, 1, 2, -0.1, True, "0.3"):
        with pytest.raises(ValueError, match=r"data.val_fraction: .* a number in \(0, 1\) or null .*, got"):
            search_config({"data": {"val_fraction": bad}})
    with pytest.raises(ValueError, match=r"data.split_seed: must be an integer, got 0.5"):
        DataConfig(split_seed=0.5)
    with pytest.raises(ValueError, match=r"data.synthetic_images: an integer >= 2"):
        DataConfig(synthetic_images=1)
    assert DataConfig(val_fraction=0.4).val_fraction == 0.4


def test_the_recipe_line_names_the_subset():
    from nasfpn.search.driver import recipe_text

    plain = search_config({})
    assert "subset" not in recipe_text(plain.proxy, plain)
    config = search_config({"data": {"max_train_images": 5000, "split_seed": 2}})
    assert recipe_text(config.proxy, config).endswith(
        ", on a class-balanced subset: at most 5000 train / all val images (data.split_seed 2)")


def test_a_box_the_proxy_drops_does_not_count_for_its_class(tmp_path):
    # Image 3's only "b" box has zero width: the proxy never sees a "b" there, so the subset must
    # not take image 3 as the rare class's image.
    coco = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (1, 2, 3)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 20, 20], "iscrowd": 0},
                            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [5, 5, 0, 20], "iscrowd": 0}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    dataset = DetectionDataset(path, tmp_path, 128)
    assert dataset.labels_of(3) == [] and dataset.labels_of(1) == [0]
    assert proxy_subset(dataset, 1, seed=0).image_ids in ([1], [2])
