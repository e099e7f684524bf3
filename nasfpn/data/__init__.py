"""Detection data: COCO-format data sets, their checker, a VOC converter, the split and the built-in set.

* :class:`DetectionDataset`: COCO JSON + image folder through pycocotools, letterboxed, with flip.
* :func:`check_dataset` / :func:`format_summary`: ``nasfpn check-data``.
* :func:`voc_to_coco`: Pascal VOC XML folder to COCO JSON (``nasfpn convert-voc``).
* :func:`split_ids`: a deterministic train/validation split of one annotation file.
* :func:`synthetic_dataset`: the built-in synthetic shapes set, cached as COCO JSON + PNG.
"""
from .check import check_dataset, format_summary
from .coco import DatasetError, DetectionDataset
from .split import split_ids
from .synthetic import synthetic_dataset
from .voc import voc_to_coco

__all__ = ["DatasetError", "DetectionDataset", "check_dataset", "format_summary", "split_ids",
           "synthetic_dataset", "voc_to_coco"]
