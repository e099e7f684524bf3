"""Pascal VOC to COCO (nasfpn.data.voc, ``nasfpn convert-voc``): the layouts, broken images and class-name
typos as users' folders bring them, and what the user sees for each."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasfpn.cli import main
from nasfpn.data import DatasetError, check_dataset, voc_to_coco

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def voc_xml(filename, size, objects):
    parts = ["<annotation>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2) in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                     f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "\n".join(parts + ["</annotation>"])


def make_voc(root, ann_dir, img_dir):
    (root / ann_dir).mkdir(parents=True)
    (root / img_dir).mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), (1, 2, 3)).save(root / img_dir / "a.jpg")
    Image.new("RGB", (50, 30)).save(root / img_dir / "b.png")
    Image.new("RGB", (20, 20)).save(root / img_dir / "c.jpeg")
    (root / ann_dir / "a.xml").write_text(voc_xml("a.jpg", (60, 40), [("dog", (1, 2, 21, 32)),
                                                                         ("dog", (30, 10, 30, 20))]))
    (root / ann_dir / "b.xml").write_text(voc_xml("b.png", (50, 30), [("cat", (40, 5, 70, 25)),
                                                                         ("cat", (55, 5, 70, 25)),
                                                                         ("dog", (0, 0, 10, 10))]))
    (root / ann_dir / "c.xml").write_text(voc_xml(None, None, [("bird", (2, 2, 10, 12))]))  # stem + size from file


def make_set(folder, names, images=None):
    """One 32 x 24 noisy JPEG and XML per entry of ``names`` (the class of its one box), the XML
    files in ``folder`` and the images in ``images`` (default: beside them)."""
    images = images or folder
    folder.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images / f"k{i:03d}.jpg")
        (folder / f"k{i:03d}.xml").write_text(voc_xml(f"k{i:03d}.jpg", (32, 24), [(name, (2, 2, 20, 20))]))


def truncate(path):
    path.write_bytes(path.read_bytes()[:400])


def convert(capsys, *args):
    """``nasfpn convert-voc ARGS``: (exit code, stdout, stderr)."""
    code = main(["convert-voc", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("ann_dir, img_dir", [("Annotations", "JPEGImages"), ("annotations", "images"), (".", ".")])
def test_voc_to_coco(tmp_path, ann_dir, img_dir):
    root = tmp_path / "voc"
    make_voc(root, ann_dir, img_dir)
    if ann_dir == "Annotations":
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    summary = voc_to_coco(root, tmp_path / "out" / "voc.json")
    assert (summary["images"], summary["boxes"]) == (3, 4)
    assert summary["classes"] == {"bird": 1, "cat": 1, "dog": 2}
    assert summary["image_sets"] == ({"train": 2} if ann_dir == "Annotations" else {})
    assert summary["layout"] == ("XML beside the images" if ann_dir == "." else f"{ann_dir}/ + {img_dir}/")
    warnings = summary["warnings"]
    assert len(warnings) == 3
    assert warnings[0].startswith("a.xml object[1] (dog): zero-size box") and "not written" in warnings[0]
    assert warnings[1].startswith("b.xml object[0] (cat): box (40, 5, 70, 25) clipped to the 50x30 image: "
                                  "(40, 5, 50, 25)")
    assert warnings[2].startswith("b.xml object[1] (cat): box (55, 5, 70, 25) lies outside the 50x30 image")

    data = json.loads((tmp_path / "out" / "voc.json").read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == \
        [(1, "a.jpg", 60, 40), (2, "b.png", 50, 30), (3, "c.jpeg", 20, 20)]
    assert [c["name"] for c in data["categories"]] == ["bird", "cat", "dog"]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"]] == \
        [(1, 3, [1, 2, 20, 30]), (2, 2, [40, 5, 10, 20]), (2, 3, [0, 0, 10, 10]), (3, 1, [2, 2, 8, 10])]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "voc.json"]   # no temp file left
    assert check_dataset(tmp_path / "out" / "voc.json", root / img_dir)["boxes"] == 4


def test_xml_beside_the_images_from_the_command_line(tmp_path, capsys):
    make_set(tmp_path / "kangaroos", ["kangaroo"] * 3)
    code, out, err = convert(capsys, tmp_path / "kangaroos", "-o", tmp_path / "k.json")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"wrote {tmp_path / 'k.json'} (XML beside the images): 3 images, 3 boxes, classes {{'kangaroo': 3}}",
        f"check it: nasfpn check-data {tmp_path / 'k.json'} --images {tmp_path / 'kangaroos'}"]
    assert check_dataset(tmp_path / "k.json", tmp_path / "kangaroos")["images"] == 3


def test_any_other_layout_by_naming_both_folders(tmp_path, capsys):
    make_set(tmp_path / "labels" / "xml", ["kangaroo"] * 2, images=tmp_path / "pics")
    code, out, err = convert(capsys, tmp_path, "-o", tmp_path / "k.json")
    assert code == 2 and not (tmp_path / "k.json").exists()
    assert err.strip() == (f"nasfpn convert-voc: error: {tmp_path}: not a VOC folder: expected Annotations/ + "
                           "JPEGImages/, annotations/ + images/ or .xml files beside their images; for another "
                           "layout name both folders (convert-voc --annotations DIR --images DIR)")
    code, out, err = convert(capsys, tmp_path / "labels", "-o", tmp_path / "k.json")
    assert code == 2 and err.rstrip().endswith("; .xml files are in xml/")   # says where they are

    code, out, err = convert(capsys, "--annotations", tmp_path / "labels" / "xml", "--images", tmp_path / "pics",
                             "-o", tmp_path / "k.json")
    assert code == 0, err
    assert f"({tmp_path / 'labels' / 'xml'} + {tmp_path / 'pics'}): 2 images, 2 boxes" in out
    assert check_dataset(tmp_path / "k.json", tmp_path / "pics")["boxes"] == 2


@pytest.mark.parametrize("args, message", [
    (["--annotations", "A"], "--annotations and --images go together"),
    (["--images", "I"], "--annotations and --images go together"),
    ([], "give VOC_DIR, or --annotations DIR --images DIR for another layout (not both)"),
    (["VOC", "--annotations", "A", "--images", "I"], "give VOC_DIR, or --annotations DIR --images DIR"),
    (["--annotations", "nope", "--images", "."], "annotation folder not found: nope"),
])
def test_folder_flags_misused(tmp_path, capsys, args, message):
    code, out, err = convert(capsys, *args, "-o", tmp_path / "k.json")
    assert code == 2 and err.startswith(f"nasfpn convert-voc: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "k.json").exists()


# ------------------------------------------------------------------------- missing and broken images

@pytest.fixture
def damaged(tmp_path):
    """Five images beside their XML files: k001 missing, k003 truncated."""
    folder = tmp_path / "kangaroos"
    make_set(folder, ["kangaroo"] * 5)
    (folder / "k001.jpg").unlink()
    truncate(folder / "k003.jpg")
    return folder


def test_missing_and_broken_images_are_left_out(damaged, tmp_path, capsys, caplog):
    code, out, err = convert(capsys, damaged, "-o", tmp_path / "k.json")
    assert code == 0
    missing, broken, count = caplog.messages
    assert missing == (f"k001.xml: image file not found (<filename> 'k001.jpg'; looked for k001.jpg, k001.jpeg, "
                       f"k001.png, k001.bmp, ... in {damaged}); left out")
    assert broken.startswith(f"k003.xml: image {damaged / 'k003.jpg'} does not decode (")
    assert broken.endswith("); left out") and count == "2 of 5 images left out: 1 missing, 1 broken"
    assert "3 images, 3 boxes" in out and "3 warning(s) above" in out
    data = json.loads((tmp_path / "k.json").read_text())
    assert [i["file_name"] for i in data["images"]] == ["k000.jpg", "k002.jpg", "k004.jpg"]
    assert check_dataset(tmp_path / "k.json", damaged)["images"] == 3   # check-data now passes


def test_strict_stops_at_missing_or_broken_images(damaged, tmp_path, capsys):
    code, out, err = convert(capsys, damaged, "-o", tmp_path / "k.json", "--strict")
    assert code == 2 and out == "" and not (tmp_path / "k.json").exists()
    assert err.strip().splitlines()[-1] == (
        f"nasfpn convert-voc: error: 2 of 5 images missing or broken (1 missing, 1 broken), the first: k001.xml: "
        f"image file not found (<filename> 'k001.jpg'; looked for k001.jpg, k001.jpeg, k001.png, k001.bmp, ... in "
        f"{damaged}); nothing written (strict)")


def test_no_usable_image_at_all_is_an_error(tmp_path):
    make_set(tmp_path / "k", ["kangaroo"] * 2)
    for image in (tmp_path / "k").glob("*.jpg"):
        truncate(image)
    with pytest.raises(DatasetError, match=r"^2 of 2 images missing or broken \(2 broken\), the first: k000.xml: "
                                           r"image .* does not decode .*; nothing written$"):
        voc_to_coco(tmp_path / "k", tmp_path / "k.json")
    assert not (tmp_path / "k.json").exists()


def test_a_size_that_disagrees_with_the_image_gives_way(tmp_path):
    make_set(tmp_path / "k", ["kangaroo"])
    (tmp_path / "k" / "k000.xml").write_text(voc_xml("k000.jpg", (64, 48), [("kangaroo", (2, 2, 40, 40))]))
    summary = voc_to_coco(tmp_path / "k", tmp_path / "k.json")
    assert summary["warnings"][0] == "k000.xml: <size> says 64x48 but k000.jpg is 32x24; the image's size is used"
    assert summary["warnings"][1].endswith("clipped to the 32x24 image: (2, 2, 32, 24)")
    assert check_dataset(tmp_path / "k.json", tmp_path / "k")["boxes"] == 1


# ---------------------------------------------------------------------------------------- class names

def test_class_name_typos_are_reported(tmp_path, capsys, caplog):
    names = ["kangaroo"] * 300 + ["kangaro", "Kangaroo ", "wallaby", "wallaby"]
    make_set(tmp_path / "k", names)
    code, out, err = convert(capsys, tmp_path / "k", "-o", tmp_path / "k.json")
    assert code == 0
    assert caplog.messages == [
        "class 'Kangaroo' (1 box, in k301.xml) differs only by case from 'kangaroo' (300 boxes); a typo?",
        "class 'kangaro' (1 box, in k300.xml) is 1 edit from 'kangaroo' (300 boxes); a typo?",
        "class 'wallaby' (2 boxes, in k302.xml, k303.xml) has only 2 of the 304 boxes; a typo?"]
    assert "classes {'Kangaroo': 1, 'kangaro': 1, 'kangaroo': 300, 'wallaby': 2}" in out


@pytest.mark.parametrize("names", [["RBC"] * 3 + ["WBC"] * 3, ["cat"] * 3 + ["cats"], ["dog", "cat", "bird"]])
def test_distinct_short_names_and_small_sets_are_not_reported(tmp_path, names):
    make_set(tmp_path / "k", names)
    assert voc_to_coco(tmp_path / "k", tmp_path / "k.json")["warnings"] == []


def test_classes_that_match_no_box_are_an_error(tmp_path, capsys):
    make_set(tmp_path / "k", ["kangaroo"] * 3 + ["kangaro"])
    code, out, err = convert(capsys, tmp_path / "k", "-o", tmp_path / "k.json", "--classes", "kangaroos")
    assert code == 2 and not (tmp_path / "k.json").exists()
    assert err.strip() == ("nasfpn convert-voc: error: none of the classes given has a box: 'kangaroos' (did you "
                           "mean 'kangaroo'?); the XML files have 'kangaroo' (3 boxes), 'kangaro' (1 box)")


def test_classes_seen_only_in_part_are_named(tmp_path, capsys, caplog):
    make_set(tmp_path / "k", ["kangaroo"] * 3 + ["emu"])
    code, out, err = convert(capsys, tmp_path / "k", "-o", tmp_path / "k.json", "--classes", " kangaroo , wombat")
    assert code == 0
    assert caplog.messages == ["class(es) given but never seen in the XML files: 'wombat'",
                               "1 object(s) of class 'emu', not in the classes given; not written"]
    assert "classes {'kangaroo': 3, 'wombat': 0}" in out


def test_voc_classes_order_and_subset(tmp_path):
    make_voc(tmp_path / "voc", "Annotations", "JPEGImages")
    summary = voc_to_coco(tmp_path / "voc", tmp_path / "voc.json", classes=["dog", "cat"])
    data = json.loads((tmp_path / "voc.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "dog"), (2, "cat")]
    assert summary["classes"] == {"dog": 2, "cat": 1}
    assert summary["warnings"][-1] == "1 object(s) of class 'bird', not in the classes given; not written"


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case, message", [
    ("no folder", "VOC folder not found"),
    ("no layout", "not a VOC folder"),
    ("bad xml", "a.xml: cannot parse the XML"),
    ("no image", "b.xml: image file not found"),
    ("no size, bad image", r"c.xml: image .*c.jpeg does not decode"),
    ("classes", "classes must be distinct and not empty"),
])
def test_voc_bad_input(tmp_path, case, message):
    root = tmp_path / "voc"
    if case != "no folder":
        make_voc(root, "Annotations", "JPEGImages")
    if case == "no layout":
        (root / "JPEGImages").rename(root / "pictures")
    elif case == "bad xml":
        (root / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg</filename>")
    elif case == "no image":
        (root / "JPEGImages" / "b.png").unlink()
    elif case == "no size, bad image":
        (root / "JPEGImages" / "c.jpeg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=message):
        voc_to_coco(root, tmp_path / "voc.json", classes=["dog", "dog"] if case == "classes" else None, strict=True)
    assert not (tmp_path / "voc.json").exists()


def test_what_the_shell_shows(damaged, tmp_path):
    """The warnings reach stderr as short lines in a real run (pytest's log capture hides that in-process)."""
    done = subprocess.run([sys.executable, "-m", "nasfpn.cli", "convert-voc", str(damaged), "-o",
                           str(tmp_path / "k.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("k001.xml: image file not found")
    assert lines[1].startswith("k003.xml: image ") and lines[2] == "2 of 5 images left out: 1 missing, 1 broken"


# --------------------------------------------------------------------------- the real VOC sets

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                       reason="no ../shared/data (only in the development checkout)")


@needs_shared_data
def test_real_voc_sets_convert_and_check(tmp_path):
    raccoon = voc_to_coco(SHARED_DATA / "raccoon", tmp_path / "raccoon.json")
    assert (raccoon["images"], raccoon["boxes"], raccoon["warnings"]) == (200, 217, [])
    summary = check_dataset(tmp_path / "raccoon.json", SHARED_DATA / "raccoon" / "images")
    assert (summary["images"], summary["boxes"], summary["classes"]) == (200, 217, {"raccoon": 217})

    bccd = voc_to_coco(SHARED_DATA / "bccd", tmp_path / "bccd.json")
    assert len(bccd["warnings"]) == 2   # RBC and WBC are not taken for a typo
    assert bccd["warnings"][0].startswith("BloodImage_00338.xml object[12] (RBC): zero-size box")
    assert bccd["warnings"][1].startswith("BloodImage_00343.xml object[3] (RBC): zero-size box")
    summary = check_dataset(tmp_path / "bccd.json", SHARED_DATA / "bccd" / "JPEGImages")
    assert summary["images"] == 364
    assert summary["classes"] == {"Platelets": 361, "RBC": 4153, "WBC": 372}


@needs_shared_data
def test_real_raccoon_files_flattened_and_damaged(tmp_path, capsys):
    """Raccoon's XML and JPEG files copied into one folder, one image truncated and one deleted."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for xml in sorted((SHARED_DATA / "raccoon" / "annotations").glob("*.xml"))[:12]:
        shutil.copy(xml, flat)
        shutil.copy(SHARED_DATA / "raccoon" / "images" / f"{xml.stem}.jpg", flat)
    jpgs = sorted(flat.glob("*.jpg"))
    truncate(jpgs[2])
    jpgs[5].unlink()
    code, out, err = convert(capsys, flat, "-o", tmp_path / "r.json")
    assert code == 0 and "(XML beside the images): 10 images" in out
    assert check_dataset(tmp_path / "r.json", flat)["images"] == 10
    code, out, err = convert(capsys, flat, "-o", tmp_path / "strict.json", "--strict")
    assert code == 2 and "2 of 12 images missing or broken (1 missing, 1 broken)" in err
    assert not (tmp_path / "strict.json").exists()
