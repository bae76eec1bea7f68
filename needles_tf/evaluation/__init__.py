"""Evaluation: metrics, saliency, weakly-supervised detection."""
