"""Region selection: which candidate boxes become region tokens ``<r0> .. <rN-1>``.

Rules of the original (mmcv ``nms`` semantics): candidates are the proposals with their fused score, user
("refer") boxes with score 1.0 and, in training only, ground-truth boxes with score 0.2; keep scores strictly
above ``score_thres``; greedy NMS suppressing IoU strictly above ``nms_thres`` on xyxy boxes; indices by
descending score; at most ``max_num``; if nothing survives, the single best candidate. The original then
permutes the kept boxes at random; here the order is by score unless a permutation or generator is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

from .boxes import cxcywh_to_xyxy

USER_BOX_SCORE = 1.0
GROUND_BOX_SCORE = 0.2


@dataclass
class SelectedRegions:
    boxes: Tensor  # (N, 4) normalised cxcywh, row k is region <rk>
    scores: Tensor  # (N,)
    candidate_indices: Tensor  # (N,) int64 index of each region among the candidates
    kept_indices: Tensor  # (N,) int64 candidate indices kept by NMS, by descending score (before reordering)
    refer_indices: list[int]  # for each user box, the region k it became (argmax IoU)
    ground_indices: list[int]  # for each ground-truth box, the region k it matched (argmax IoU)


def nms_keep(boxes_xyxy: Tensor, scores: Tensor, iou_thres: float, score_thres: float, max_num: int) -> Tensor:
    """mmcv-style NMS: candidate indices with score > score_thres surviving NMS, by descending score, <= max_num."""
    valid = torch.nonzero(scores > score_thres).flatten()
    keep = nms(boxes_xyxy[valid].float(), scores[valid].float(), iou_thres)
    return valid[keep][:max_num]


def left_to_right_order(boxes_cxcywh: Tensor) -> Tensor:
    """(N,) int64 indices that order (N, 4) cxcywh boxes by centre x; equal centres keep their given order."""
    return torch.sort(boxes_cxcywh[:, 0], stable=True).indices


def select_regions(
    proposal_boxes: Tensor,
    proposal_scores: Tensor,
    *,
    nms_thres: float,
    score_thres: float,
    max_num: int,
    refer_boxes: Tensor | None = None,
    ground_boxes: Tensor | None = None,
    permutation: Tensor | None = None,
    generator: torch.Generator | None = None,
    left_to_right: bool = False,
) -> SelectedRegions:
    """Select region boxes for one image.

    Args:
        proposal_boxes: (Q, 4) normalised cxcywh. proposal_scores: (Q,).
        refer_boxes: optional (M, 4) user boxes, normalised cxcywh (score 1.0).
        ground_boxes: optional (G, 4) training ground-truth boxes (score 0.2).
        permutation: optional explicit order of the kept boxes (to reproduce a recorded random order).
        generator: if given (and no permutation), the kept boxes are randomly permuted, as the original does.
        left_to_right: (without permutation or generator) order the kept boxes by centre x, ties by score;
            otherwise they stay by descending score.
    """
    device = proposal_boxes.device
    parts_b, parts_s = [proposal_boxes], [proposal_scores]
    for extra, score in ((refer_boxes, USER_BOX_SCORE), (ground_boxes, GROUND_BOX_SCORE)):
        if extra is not None and len(extra):
            parts_b.append(extra.to(proposal_boxes.dtype))
            parts_s.append(torch.full((len(extra),), score, dtype=proposal_scores.dtype, device=device))
    cand_boxes, cand_scores = torch.cat(parts_b), torch.cat(parts_s)
    kept = nms_keep(cxcywh_to_xyxy(cand_boxes), cand_scores, nms_thres, score_thres, max_num)
    if kept.numel() == 0:
        kept = cand_scores.argmax().view(1)
    if permutation is not None:
        order = permutation.to(device)
    elif generator is not None:
        order = torch.randperm(len(kept), generator=generator).to(device)
    elif left_to_right:  # kept is by descending score, so equal centres keep the higher score first
        order = left_to_right_order(cand_boxes[kept])
    else:
        order = torch.arange(len(kept), device=device)
    chosen = kept[order]
    boxes = cand_boxes[chosen]

    def match(extra: Tensor | None) -> list[int]:
        if extra is None or not len(extra):
            return []
        iou = box_iou(cxcywh_to_xyxy(extra.to(boxes.dtype)).float(), cxcywh_to_xyxy(boxes).float())
        return iou.argmax(1).tolist()

    return SelectedRegions(
        boxes=boxes,
        scores=cand_scores[chosen],
        candidate_indices=chosen,
        kept_indices=kept,
        refer_indices=match(refer_boxes),
        ground_indices=match(ground_boxes),
    )
