"""COCO AP of a proxy detector on a validation split, by pycocotools."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Callable, Dict, Iterable, List

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def coco_detections(detections: Iterable[tuple[int, Dict[str, torch.Tensor]]], dataset) -> List[dict]:
    """Detections (image id, canvas-pixel boxes) as COCO result records in original pixels."""
    records = []
    for image_id, det in detections:
        boxes = dataset.to_original(det["boxes"].float().cpu(), image_id)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist()):
            records.append({"image_id": image_id, "category_id": dataset.category_ids[label],
                            "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return records


def coco_ap(coco_gt, records: List[dict], image_ids: List[int]) -> Dict[str, float]:
    """AP, AP50, AP75 and AP by size (COCO's ``summarize`` numbers) over ``image_ids``; no
    detections at all scores 0. A size bucket without ground truth is NaN, as COCO reports -1."""
    if not records:
        return {m: 0.0 for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_dt = coco_gt.loadRes(records)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[:6]
    return {m: (float(v) if v >= 0 else float("nan")) for m, v in zip(METRICS, stats)}


@torch.no_grad()
def evaluate(detect: Callable[[List[int]], List[Dict[str, torch.Tensor]]], dataset, batch_size: int = 16) -> Dict[str, float]:
    """Run ``detect`` (dataset indices -> detections) over the whole split and score it.

    ``detect`` hides where the features come from (the backbone or the cache)."""
    results = []
    for start in range(0, len(dataset), batch_size):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        for index, det in zip(indices, detect(indices)):
            results.append((dataset.image_ids[index], det))
    return coco_ap(dataset.coco, coco_detections(results, dataset), dataset.image_ids)


def finite(metrics: Dict[str, float]) -> Dict[str, float]:
    """NaN buckets as None-free floats for JSON: NaN stays NaN in Python, -1 in files."""
    return {k: (v if np.isfinite(v) else -1.0) for k, v in metrics.items()}
