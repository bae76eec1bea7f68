"""Where a classifier looks: saliency and evidence maps of a split, scored against the needles.

Saliency (paper, Fig. 16): the gradient of the needle logit with respect to the input pixels,
root mean square over channels. Evidence: the linear classifier at every embedding location,
placed at the receptive fields' centres (heatmaps.place_evidence). Both are scored by
localisation.py (one detection per image at the map's maximum); a few images of each outcome
(true / false positives and negatives) are kept for figures, drawn at random with a seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from needles_tf.evaluation import localisation
from needles_tf.evaluation.metrics import THRESHOLD
from needles_tf.heatmaps import place_evidence
from needles_tf.input.objects import object_dataset
from needles_tf.models import build_evidence_model, check_binary, needle_probability
from needles_tf.models.bagnet import EMBEDDING_OFFSET, EMBEDDING_STRIDE

MAPS = ("saliency", "evidence")
OUTCOMES = ("true_positive", "false_positive", "false_negative", "true_negative")


@dataclasses.dataclass
class Example:
    """One image kept for a figure, with its maps and region."""

    image: np.ndarray           # [H, W, C] in [0, 1]
    label: int
    probability: float
    region: np.ndarray          # bool [H, W]
    maps: dict[str, np.ndarray]  # MAPS -> [H, W]


def map_function(model: keras.Model):
    """A compiled function: images [B, H, W, C] -> (needle probabilities [B], saliency [B, H, W],
    evidence for minus against a needle [B, h, w])."""
    check_binary(model)
    evidence_model = build_evidence_model(model)

    @tf.function(reduce_retracing=True)
    def maps(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = evidence_model(images, training=False)
            needle_logit = tf.cast(outputs["logits"][:, 1], tf.float32)
        gradient = tape.gradient(needle_logit, images)
        saliency = tf.sqrt(tf.reduce_mean(tf.square(gradient), axis=-1))
        evidence = tf.cast(outputs["evidence_map"], tf.float32)
        return (needle_probability(outputs["logits"]), saliency,
                evidence[..., 1] - evidence[..., 0])

    return maps


def _outcome(label: int, probability: float) -> str:
    if probability > THRESHOLD:
        return "true_positive" if label == 1 else "false_positive"
    return "false_negative" if label == 1 else "true_negative"


def localise(model: keras.Model, data_dir: str, split: str, batch_size: int = 32,
             num_examples: int = 16, seed: int = 0,
             progress: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """Scores where `model` looks on one split of a dataset directory (`progress`: a bar on
    stderr).

    Returns:
        (scores, examples): scores holds, per map, the detection AP and pointing accuracy,
        beside the chance level of pointing (the mean object area over the image area of the
        positive images) and the counts; examples maps each outcome to up to `num_examples`
        Examples, a uniform sample of that outcome's images (reservoir sampling, `seed`).

    Raises:
        metadata.DatasetError: see input.objects.object_dataset.
    """
    function = map_function(model)
    rng = np.random.default_rng(seed)
    labels, fractions = [], []
    confidences = {name: [] for name in MAPS}
    hits = {name: [] for name in MAPS}
    examples = {outcome: [] for outcome in OUTCOMES}
    seen = dict.fromkeys(OUTCOMES, 0)
    batches = object_dataset(data_dir, split, batch_size)
    for images, batch_labels, regions in tqdm(batches, total=len(batches), disable=not progress,
                                              desc=f"{split} maps", unit="batch"):
        batch_probabilities, saliency, evidence = (t.numpy() for t in function(images))
        height, width = regions.shape[1:]
        for i, (label, probability, region) in enumerate(zip(
                batch_labels.numpy(), batch_probabilities, regions.numpy())):
            # The placed evidence peaks at a location's centre (linear in between), so its
            # peak comes from the small map; only a kept image's map is placed (image size).
            row, col, value = localisation.peak(evidence[i])
            peaks = {"saliency": localisation.peak(saliency[i]),
                     "evidence": (EMBEDDING_OFFSET + EMBEDDING_STRIDE * row,
                                  EMBEDDING_OFFSET + EMBEDDING_STRIDE * col, value)}
            for name, (row, col, value) in peaks.items():
                confidences[name].append(value)
                hits[name].append(bool(region[row, col]))
            labels.append(int(label))
            fractions.append(region.mean())
            outcome = _outcome(int(label), float(probability))
            seen[outcome] += 1
            kept = examples[outcome]  # a reservoir: each image seen so far equally likely kept
            slot = len(kept) if len(kept) < num_examples else int(rng.integers(seen[outcome]))
            if slot < num_examples:  # appends at len(kept), else replaces
                maps = {"saliency": saliency[i],
                        "evidence": place_evidence(evidence[i], height, width)}
                kept[slot:slot + 1] = [Example(images[i].numpy(), int(label),
                                               float(probability), region, maps)]
    if not labels:
        raise ValueError(f"{data_dir}: split {split!r} has no images")
    labels_array = np.array(labels)
    positives = labels_array == 1
    scores = {
        "data_dir": data_dir, "split": split, "count": len(labels),
        "positives": int(positives.sum()),
        "pointing_chance": float(np.mean(np.array(fractions)[positives])) if positives.any()
        else None,
        "outcomes": seen,
    }
    for name in MAPS:
        scores[name] = {
            "average_precision": localisation.detection_average_precision(
                np.array(confidences[name]), np.array(hits[name]), labels_array),
            "pointing_accuracy": localisation.pointing_accuracy(np.array(hits[name]),
                                                                labels_array),
        }
    return scores, examples
