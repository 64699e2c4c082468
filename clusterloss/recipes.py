"""The loss names of the command line, each a recipe: what head the model gets, what goes into
`compile(loss=...)`, whether there is a center loss, and whether batches need pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras

from clusterloss.layers import CenterLoss
from clusterloss.losses import SparseCategoricalFocalCrossentropy, SparseLabelSmoothingCrossentropy
from clusterloss.models import ClusterModel

Options = dict[str, Any]


def _crossentropy(options: Options) -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclass(frozen=True)
class Recipe:
    """How to train with one loss name."""

    loss: Callable[[Options], keras.losses.Loss]
    head: Callable[[int, Options], keras.layers.Layer] | None = None  # None: Dense logits
    classifier: bool = True  # False: the loss applies to the embeddings, no head
    center: bool = False
    pairs: bool = False  # batches from the M-per-class sampler
    description: str = ""


RECIPES: dict[str, Recipe] = {
    "softmax": Recipe(_crossentropy, description="crossentropy on a Dense head"),
    "center": Recipe(
        _crossentropy, center=True, description="crossentropy + center loss (Wen et al. 2016)"
    ),
    "focal": Recipe(
        lambda o: SparseCategoricalFocalCrossentropy(
            gamma=o.get("focal_gamma", 2.0), alpha=o.get("focal_alpha", 0.25), from_logits=True
        ),
        description="sparse focal crossentropy (Lin et al. 2017)",
    ),
    "label-smoothing": Recipe(
        lambda o: SparseLabelSmoothingCrossentropy(o.get("label_smoothing", 0.1), from_logits=True),
        description="crossentropy with label smoothing toward uniform",
    ),
}


def build_model(
    name: str, backbone: keras.Model, num_classes: int, options: Options | None = None
) -> tuple[ClusterModel, keras.losses.Loss, Recipe]:
    """A `ClusterModel` and the loss to compile it with, for the loss `name`."""
    if name not in RECIPES:
        raise ValueError(f"`loss` must be one of {sorted(RECIPES)}; got {name!r}.")
    options = options or {}
    recipe = RECIPES[name]
    center = None
    if recipe.center:
        center = CenterLoss(
            weight=options.get("center_weight", 0.1),
            alpha=options.get("center_alpha", 0.5),
            update=options.get("center_update", "paper"),
            name="center_loss",
        )
    if not recipe.classifier:
        model = ClusterModel(backbone, center_loss=center, name="cluster_model")
    else:
        head = recipe.head(num_classes, options) if recipe.head else None
        model = ClusterModel(
            backbone, num_classes=num_classes, head=head, center_loss=center, name="cluster_model"
        )
    return model, recipe.loss(options), recipe
