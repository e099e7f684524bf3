import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from nasfpn.data import DatasetError, DetectionDataset, check_dataset, format_summary, split_ids, synthetic_dataset
from nasfpn.data.check import size_bucket
from nasfpn.data.split import default_val_fraction
from nasfpn.data.synthetic import CLASSES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic_dataset(tmp_path_factory.mktemp("cache"), num_images=12, image_size=64, seed=0)


# ---------------------------------------------------------------------------------------- dataset

def test_dataset_images_and_targets(tiny):
    ds = DetectionDataset(*tiny, size=48)
    assert len(ds) == 12 and ds.image_ids == sorted(ds.image_ids)
    assert ds.class_names == list(CLASSES) and ds.num_classes == len(CLASSES)
    assert ds.category_ids == list(range(1, len(CLASSES) + 1))
    total = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and len(boxes) == len(labels)
        assert ((labels >= 0) & (labels < ds.num_classes)).all()
        assert (boxes >= 0).all() and (boxes <= 48).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert target["image_id"] == ds.image_ids[i] and target["scale"] == pytest.approx(48 / 64)
        assert target["flip"] is False
        total += len(boxes)
    assert total > 12


def test_flip_mirrors_image_and_boxes(tiny):
    ds = DetectionDataset(*tiny, size=64)
    for i in range(3):
        image, target = ds.load(i)
        flipped, ftarget = ds.load(i, flip=True)
        assert torch.equal(flipped, image.flip(-1)) and ftarget["flip"] is True
        b, f = target["boxes"], ftarget["boxes"]
        assert torch.allclose(f[:, [0, 2]], 64 - b[:, [2, 0]]) and torch.equal(f[:, [1, 3]], b[:, [1, 3]])
        assert torch.allclose(ds.to_original(f, target["image_id"], flip=True), ds.to_original(b, target["image_id"]))


def write_coco(path, images, annotations, categories=({"id": 1, "name": "thing"},)):
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


@pytest.fixture
def tall_image(tmp_path):
    """A 20 x 40 (w x h) image, white in x 4..12, y 10..18, and its COCO file."""
    pixels = np.zeros((40, 20, 3), np.uint8)
    pixels[10:18, 4:12] = 255
    Image.fromarray(pixels).save(tmp_path / "tall.png")
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [4, 10, 8, 8]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 40], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [5, 5, 0, 3]},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [5, 5, 0.2, 3]}]
    return write_coco(tmp_path / "tall.json", [{"id": 7, "file_name": "tall.png", "width": 20, "height": 40}], anns)


def test_letterbox_and_to_original_on_a_non_square_image(tmp_path, tall_image):
    ds = DetectionDataset(tall_image, tmp_path, size=80)   # scale 2: the image fills x 0..40, y 0..80
    image, target = ds.load(0)
    assert target["scale"] == 2.0
    assert ds.skipped == {"crowd": 1, "empty": 1, "tiny": 1}
    assert target["boxes"].tolist() == [[8, 20, 24, 36]] and target["labels"].tolist() == [0]
    assert image[:, 22:34, 10:22].min() > 0.95            # inside the box: white
    assert image[:, :, 40:].abs().max() == 0               # padding on the right
    assert ds.to_original(target["boxes"], 7).tolist() == [[4, 10, 12, 18]]

    flipped, ftarget = ds.load(0, flip=True)
    assert ftarget["boxes"].tolist() == [[56, 20, 72, 36]]
    assert flipped[:, :, :40].abs().max() == 0             # padding moved to the left
    assert flipped[:, 22:34, 58:70].min() > 0.95
    assert ds.to_original(ftarget["boxes"], 7, flip=True).tolist() == [[4, 10, 12, 18]]
    # clipped to the original image
    assert ds.to_original(torch.tensor([[-10.0, -10.0, 100.0, 100.0]]), 7).tolist() == [[0, 0, 20, 40]]


def test_dataset_from_coco_object_subset_and_errors(tmp_path, tiny):
    coco = COCO(str(tiny[0]))
    ds = DetectionDataset(coco, tiny[1], size=32, image_ids=[5, 2, 9])
    assert ds.coco is coco and ds.image_ids == [2, 5, 9] and len(ds) == 3
    assert ds.load(0)[1]["image_id"] == 2
    with pytest.raises(DatasetError, match="image id 99 is not in the annotations"):
        DetectionDataset(coco, tiny[1], size=32, image_ids=[1, 99])
    with pytest.raises(DatasetError, match="annotation file not found"):
        DetectionDataset(tmp_path / "nothing.json", tiny[1], size=32)


def test_dataset_load_errors_name_the_image(tmp_path, tall_image):
    data = json.loads(tall_image.read_text())
    data["images"][0]["width"] = 21
    bad_size = write_coco(tmp_path / "size.json", data["images"], data["annotations"])
    with pytest.raises(DatasetError, match=r"image 7 .*tall.png\): the file is 20x40, the annotations say 21x40"):
        DetectionDataset(bad_size, tmp_path, size=32).load(0)
    with pytest.raises(DatasetError, match="image 7: file not found"):
        DetectionDataset(tall_image, tmp_path / "elsewhere", size=32).load(0)
    data["annotations"][0]["category_id"] = 5
    bad_cat = write_coco(tmp_path / "cat.json", data["images"], data["annotations"])
    with pytest.raises(DatasetError, match="annotation 1 \\(image 7\\): unknown category id 5"):
        DetectionDataset(bad_cat, tmp_path, size=32)


# ------------------------------------------------------------------------------------------ split

def test_split_is_deterministic_and_covers_everything():
    ids = list(range(100, 150))
    train, val = split_ids(ids, 0.2, seed=3)
    assert (train, val) == split_ids(list(reversed(ids)), 0.2, seed=3)
    assert len(val) == 10 and sorted(train + val) == ids
    assert train == sorted(train) and val == sorted(val)
    assert split_ids(ids, 0.2, seed=4) != (train, val)
    assert split_ids([5, 1], 0.01) in (([1], [5]), ([5], [1]))   # at least one on each side
    assert len(split_ids([1, 2, 3], 0.99)[0]) == 1


def test_the_default_validation_share_grows_on_a_small_set():
    """0.2 where that is 150 images or more; on a smaller set raised towards 150, at most 0.4:
    bccd's 364 images give 146 (seed-to-seed tau 0.76 there, against 0.54 with 0.2's 73)."""
    assert default_val_fraction(800) == default_val_fraction(100_000) == 0.2  # the built-in data: as before
    assert len(split_ids(range(364), default_val_fraction(364))[1]) == 146
    assert len(split_ids(range(500), default_val_fraction(500))[1]) == 150
    assert default_val_fraction(200) == default_val_fraction(12) == 0.4


def test_a_search_without_val_fraction_holds_out_more_of_a_small_set(tmp_path, caplog):
    """Said in the log; a given data.val_fraction is taken as it is, whatever the size."""
    from nasfpn.task import DataConfig, val_fraction

    with caplog.at_level("WARNING"):
        assert val_fraction(DataConfig(), 364) == 0.4
    assert "validation split: 0.40 of the 364 images (data.val_fraction not given" in caplog.text
    caplog.clear()
    assert val_fraction(DataConfig(val_fraction=0.2), 364) == 0.2
    assert val_fraction(DataConfig(), 800) == 0.2 and not caplog.text


@pytest.mark.parametrize("ids, fraction, message", [
    ([1], 0.2, "at least 2 images"), ([1, 2, 2], 0.2, "image id 2 is repeated"),
    ([1, 2, 3], 0.0, "val_fraction"), ([1, 2, 3], 1.0, "val_fraction")])
def test_split_rejects_bad_input(ids, fraction, message):
    with pytest.raises(ValueError, match=message):
        split_ids(ids, fraction)


# -------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_cached_and_plain_coco(tmp_path):
    a = synthetic_dataset(tmp_path / "one", num_images=6, image_size=64, seed=1)
    b = synthetic_dataset(tmp_path / "two", num_images=6, image_size=64, seed=1)
    assert a[0].parent.name == "synthetic-v2r1-n6-s64-seed1"
    assert a[0].read_bytes() == b[0].read_bytes()
    names = sorted(p.name for p in a[1].iterdir())
    assert names == [f"{i:06d}.png" for i in range(1, 7)] == sorted(p.name for p in b[1].iterdir())
    assert all((a[1] / n).read_bytes() == (b[1] / n).read_bytes() for n in names)
    assert synthetic_dataset(tmp_path / "one", num_images=6, image_size=64, seed=2)[0].read_bytes() != \
        a[0].read_bytes()

    mtime = a[0].stat().st_mtime_ns
    assert synthetic_dataset(tmp_path / "one", num_images=6, image_size=64, seed=1) == a   # cached
    assert a[0].stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["synthetic-v2r1-n6-s64-seed1",
                                                                      "synthetic-v2r1-n6-s64-seed2"]  # no temp left

    coco = COCO(str(a[0]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) > 6
    assert {"info", "licenses"} <= set(coco.dataset)
    assert check_dataset(*a)["images"] == 6


def test_synthetic_regenerates_an_incomplete_folder(tmp_path):
    folder = tmp_path / "synthetic-v2r1-n2-s64-seed0"
    (folder / "images").mkdir(parents=True)
    annotations, images = synthetic_dataset(tmp_path, num_images=2, image_size=64)
    assert annotations.is_file() and len(list(images.iterdir())) == 2


def test_synthetic_sizes_span_small_medium_large(tmp_path):
    annotations, images = synthetic_dataset(tmp_path, num_images=40, image_size=256)
    summary = check_dataset(annotations, images)
    sizes, boxes = summary["sizes"], summary["boxes"]
    assert boxes >= 40 * 4
    assert sizes["small"] > 0.4 * boxes and sizes["medium"] > 0.15 * boxes and sizes["large"] > 0.05 * boxes
    assert all(n > 0.08 * boxes for n in summary["classes"].values())
    assert summary["images_without_boxes"] == 0


def test_synthetic_spots_take_the_class_of_the_object_they_lie_on():
    import numpy as np

    from nasfpn.data.synthetic import draw_image

    enclosed = same_class = 0
    for index in range(30):
        _, objects = draw_image(np.random.default_rng([0, index]), 256)
        for label, (x, y, w, h) in objects:
            around = [other for other, (ox, oy, ow, oh) in objects
                      if ow > 2 * w and ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh]
            if w <= 24 and h <= 24 and around:
                enclosed += 1
                same_class += label in around
    # Spots share their object's class; a small object that merely falls in a large one's box
    # (in a ring's hole, beside a triangle) shares it by chance only (about 1 in 6).
    assert enclosed >= 60 and same_class >= 0.75 * enclosed


def test_synthetic_spots_never_hide_their_object():
    """A spot that would leave its object below VISIBLE_MIN visible is not drawn: the object
    would go unannotated while its spots keep its class."""
    import numpy as np

    from nasfpn.data.synthetic import VISIBLE_MIN, _add_spots

    side = 120
    labels = np.zeros((256, 256), dtype=np.int32)
    placed, full = [(0, 0, 0, np.ones((side, side), dtype=bool))], [side * side]
    visible = [int(VISIBLE_MIN * full[0]) + 60]   # room for no spot (the smallest, a 10 px disc, is ~80 px)
    for seed in range(20):
        _add_spots(np.random.default_rng(seed), np.zeros((256, 256, 3), np.float32), labels, placed, full,
                   visible, 0, 1.0)
    assert visible[0] >= VISIBLE_MIN * full[0]


def test_synthetic_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        synthetic_dataset(tmp_path, num_images=2, image_size=16)
    with pytest.raises(ValueError, match="num_images"):
        synthetic_dataset(tmp_path, num_images=0)


# ------------------------------------------------------------------------------------------ check

def test_check_summary(tiny):
    summary = check_dataset(*tiny)
    coco = json.loads(tiny[0].read_text())
    assert summary["images"] == 12 and summary["boxes"] == len(coco["annotations"])
    assert sum(summary["sizes"].values()) == summary["boxes"] == sum(summary["classes"].values())
    assert set(summary["classes"]) == set(CLASSES)
    table = format_summary(summary)
    assert "circle" in table and f"boxes        {summary['boxes']}" in table
    assert size_bucket(31, 33) == "small" and size_bucket(32, 32) == "medium" and size_bucket(96, 96) == "large"


@pytest.fixture
def good(tmp_path):
    """Two PNG images (32 x 24) and three boxes: the dict to spoil and a writer."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 24), (90, 20, 200)).save(tmp_path / name)
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24},
                       {"id": 2, "file_name": "b.png", "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 24]},
                            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [20, 10, 5, 5]}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}

    def write(d):
        path = tmp_path / "data.json"
        path.write_text(json.dumps(d) if not isinstance(d, str) else d)
        return path
    return data, write, tmp_path


def test_check_accepts_the_good_set(good):
    data, write, folder = good
    summary = check_dataset(write(data), folder)
    assert (summary["images"], summary["boxes"], summary["classes"]) == (2, 3, {"cat": 2, "dog": 1})
    assert summary["sizes"] == {"small": 3, "medium": 0, "large": 0}   # 32 x 24 is small


def spoil(data, case, folder):
    a3 = data["annotations"][2]
    if case == "not json":
        return "{oops"
    if case == "list":
        return [1, 2]
    if case == "no key":
        del data["categories"]
    elif case == "wrong type":
        data["images"] = {}
    elif case == "no width":
        del data["images"][1]["width"]
    elif case == "bad bbox":
        a3["bbox"] = [1, 2, 3]
    elif case == "dup image":
        data["images"][1]["id"] = 1
    elif case == "dup annotation":
        a3["id"] = 2
    elif case == "dup category":
        data["categories"][1]["id"] = 1
    elif case == "unknown image":
        a3["image_id"] = 99
    elif case == "unknown category":
        a3["category_id"] = 7
    elif case == "outside":
        a3["bbox"] = [20, 10, 30, 5]
    elif case == "empty box":
        a3["bbox"] = [20, 10, 0, 5]
    elif case == "missing file":
        (folder / "b.png").unlink()
    elif case == "unreadable":
        (folder / "b.png").write_bytes(b"not an image at all")
    elif case == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            folder / "b.png")
        (folder / "b.png").write_bytes((folder / "b.png").read_bytes()[:800])
    elif case == "size mismatch":
        data["images"][1]["width"] = 33
    return data


@pytest.mark.parametrize("case, message", [
    ("not json", "data.json: not JSON: Expecting property name"),
    ("list", "not COCO: the top level is a list"),
    ("no key", "not COCO: no 'categories' key"),
    ("wrong type", "not COCO: 'images' is a dict, not a list"),
    ("no width", "not COCO: images[1] (id 2): no 'width'"),
    ("bad bbox", "not COCO: annotations[2] (id 3): 'bbox' must be a list of four finite numbers"),
    ("dup image", "duplicate image id 1 (a.png and b.png)"),
    ("dup annotation", "duplicate annotation id 2"),
    ("dup category", "duplicate category id 1 ('cat' and 'dog')"),
    ("unknown image", "annotation 3: image id 99 does not exist"),
    ("unknown category", "annotation 3 (image 2, b.png): category id 7 does not exist"),
    ("outside", "annotation 3 (image 2, b.png): box [x, y, w, h] = [20, 10, 30, 5] lies outside the 32x24 image"),
    ("empty box", "annotation 3 (image 2, b.png): box [x, y, w, h] = [20, 10, 0, 5] has non-positive width"),
    ("missing file", "image 2: file not found: "),
    ("unreadable", "b.png): cannot read the image: cannot identify image file"),
    ("truncated", "b.png): cannot read the image"),
    ("size mismatch", "b.png): the file is 32x24 pixels, the annotations say 33x24"),
])
def test_check_names_the_problem(good, case, message):
    data, write, folder = good
    with pytest.raises(DatasetError) as err:
        check_dataset(write(spoil(data, case, folder)), folder)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_check_reports_the_first_of_several_problems(good):
    data, write, folder = good
    data["annotations"][0]["bbox"] = [-5, 0, 3, 3]
    (folder / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"^annotation 1 \(image 1, a.png\): .* outside .* \(and 1 more problem\)$") \
            as err:
        check_dataset(write(data), folder)
    assert len(err.value.problems) == 2 and "image 2: file not found" in err.value.problems[1]
    with pytest.raises(DatasetError, match="image folder not found"):
        check_dataset(write(json.loads(json.dumps(good[0]))), folder / "nope")
