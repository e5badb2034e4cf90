"""The 15 VinBigData classes and the one mapping between class_id and torchvision labels.

class_id 0..13 are findings, 14 is "No finding". torchvision detectors reserve label 0 for
background, so a detector label is ``class_id + 1`` for the 14 findings.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NUM_FINDINGS = 14  # class_ids 0..13
NO_FINDING = 14  # class_id of "No finding"
NUM_CLASSES = 15  # classes scored by the metric (findings + No finding)
NUM_DETECTOR_LABELS = NUM_FINDINGS + 1  # torchvision num_classes: findings + background
NORMAL_BOX = (0.0, 0.0, 1.0, 1.0)  # the competition's box for class 14
NAME_TO_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}


def class_to_label(class_id: np.ndarray | int) -> np.ndarray | int:
    """Finding class_id (0..13) -> torchvision label (1..14)."""
    return class_id + 1


def label_to_class(label: np.ndarray | int) -> np.ndarray | int:
    """torchvision label (1..14) -> finding class_id (0..13)."""
    return label - 1
