"""Parts shared by several heads: box coder, IoU matcher, balanced sampler, box and varifocal losses,
Hungarian matchers and set-prediction loss terms, sigmoid top-k detections, MLP, multi-scale deformable
attention. Importing this package fills the LAYERS registry."""
from __future__ import annotations

from detres.modeling.layers.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder
from detres.modeling.layers.denoising import ContrastiveDenoising, DenoisingQueries, denoising_attn_mask
from detres.modeling.layers.hungarian_matcher import FocalHungarianMatcher, HungarianMatcher, assign
from detres.modeling.layers.losses import box_regression_loss, crowd_overlap, split_crowd, varifocal_loss
from detres.modeling.layers.matcher import IGNORE, NEGATIVE, POSITIVE, Matcher
from detres.modeling.layers.mlp import MLP
from detres.modeling.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_sample, sampling_locations
from detres.modeling.layers.sampler import MATCHING_MOVED_KEYS, BalancedSampler, sample_balanced
from detres.modeling.layers.set_losses import (
    box_losses, cardinality_error, class_error, denoising_indices, matched_index, matched_labels,
    num_boxes_normalizer, varifocal_set_loss,
)
from detres.modeling.layers.shapes import level_shapes
from detres.modeling.layers.topk_detections import sigmoid_topk_detections, topk_detections

__all__ = [
    "ContrastiveDenoising", "DenoisingQueries", "denoising_attn_mask",
    "DEFAULT_SCALE_CLAMP", "BoxCoder", "box_regression_loss", "crowd_overlap", "split_crowd", "varifocal_loss",
    "IGNORE", "NEGATIVE", "POSITIVE", "Matcher", "BalancedSampler", "sample_balanced", "MATCHING_MOVED_KEYS", "level_shapes",
    "HungarianMatcher", "FocalHungarianMatcher", "assign", "MLP", "MSDeformAttn", "ms_deform_attn_sample", "sampling_locations",
    "box_losses", "cardinality_error", "class_error", "denoising_indices", "matched_index", "matched_labels",
    "num_boxes_normalizer", "varifocal_set_loss",
    "sigmoid_topk_detections", "topk_detections",
]
