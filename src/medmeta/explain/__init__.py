"""Explanations of predictions: saliency maps (Grad-CAM, input gradients) and nearest support images."""

from medmeta.explain.neighbours import nearest_support
from medmeta.explain.saliency import grad_cam, input_gradient, last_conv, saliency

__all__ = ["grad_cam", "input_gradient", "last_conv", "nearest_support", "saliency"]
