"""Convert a Pascal VOC folder (one XML per image) to a COCO JSON file and print what was done.

    python scripts/voc_to_coco.py ../shared/data/raccoon -o raccoon.json
    python scripts/voc_to_coco.py ../shared/data/bccd -o bccd.json --classes RBC,WBC,Platelets

Both layouts are read: ``Annotations/`` + ``JPEGImages/`` and ``annotations/`` + ``images/``. Boxes
of zero size or outside the image are left out and listed; see :mod:`nasfpn.data.voc` for the
coordinate convention. Exit code 2 on bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nasfpn.data import DatasetError, voc_to_coco

SHOWN_WARNINGS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("voc_root", type=Path, help="the VOC folder")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the COCO JSON file to write")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names, in category-id order (default: all found, sorted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the warnings are printed below
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        summary = voc_to_coco(args.voc_root, args.output, classes)
    except DatasetError as err:
        print(f"voc_to_coco: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {summary['out']}: {summary['images']} images, {summary['boxes']} boxes "
          f"({summary['layout']})")
    width = max(len(name) for name in summary["classes"])
    for name, count in summary["classes"].items():
        print(f"  {name:<{width}}  {count:>6}")
    if summary["image_sets"]:
        print("ImageSets/Main (not used): " + ", ".join(f"{k} {v}" for k, v in summary["image_sets"].items()))
    warnings = summary["warnings"]
    print(f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}")
    for message in warnings[:SHOWN_WARNINGS]:
        print(f"  {message}")
    if len(warnings) > SHOWN_WARNINGS:
        print(f"  ... and {len(warnings) - SHOWN_WARNINGS} more")
    print(f"check it: nasfpn check-data {summary['out']} --images {summary['images_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
