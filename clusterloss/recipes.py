"""The loss names of the command line, each a recipe: what head the model gets, what goes into
`compile(loss=...)`, whether there is a center loss, and whether batches need pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras

from clusterloss import losses as L
from clusterloss import miners
from clusterloss.layers import ArcFace, CenterLoss, CosFace, NormFace, ProxyAnchorHead, SphereFace
from clusterloss.models import ClusterModel

Options = dict[str, Any]


def _crossentropy(options: Options) -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _head(cls):
    """A margin head with `--scale`/`--margin` when given, else the class defaults."""

    def make(num_classes: int, options: Options) -> keras.layers.Layer:
        kwargs = {k: options[k] for k in ("scale", "margin") if options.get(k) is not None}
        if cls is NormFace:
            kwargs.pop("margin", None)
        return cls(num_classes, **kwargs)

    return make


def _margin(options: Options, default: float) -> float:
    return default if options.get("margin") is None else options["margin"]


@dataclass(frozen=True)
class Recipe:
    """How to train with one loss name."""

    loss: Callable[[Options], keras.losses.Loss]
    head: Callable[[int, Options], keras.layers.Layer] | None = None  # None: Dense logits
    classifier: bool = True  # False: the loss applies to the embeddings, no head
    center: bool = False
    pairs: bool = False  # batches from the M-per-class sampler
    unit_norm: bool = False  # end the backbone with UnitNormalization (the loss expects it)
    description: str = ""


RECIPES: dict[str, Recipe] = {
    "softmax": Recipe(_crossentropy, description="crossentropy on a Dense head"),
    "center": Recipe(
        _crossentropy, center=True, description="crossentropy + center loss (Wen et al. 2016)"
    ),
    "focal": Recipe(
        lambda o: L.SparseCategoricalFocalCrossentropy(
            gamma=o.get("focal_gamma", 2.0), alpha=o.get("focal_alpha", 0.25), from_logits=True
        ),
        description="sparse focal crossentropy (Lin et al. 2017)",
    ),
    "label-smoothing": Recipe(
        lambda o: L.SparseLabelSmoothingCrossentropy(o.get("label_smoothing", 0.1), from_logits=True),
        description="crossentropy with label smoothing toward uniform",
    ),
    "arcface": Recipe(_crossentropy, head=_head(ArcFace), description="ArcFace head"),
    "cosface": Recipe(_crossentropy, head=_head(CosFace), description="CosFace head"),
    "sphereface": Recipe(_crossentropy, head=_head(SphereFace), description="A-Softmax head"),
    "normface": Recipe(_crossentropy, head=_head(NormFace), description="normalised softmax"),
    "proxy-anchor": Recipe(
        lambda o: L.ProxyAnchorLoss(margin=_margin(o, 0.1)),
        head=lambda n, o: ProxyAnchorHead(n),
        description="proxy-anchor loss on learned proxies",
    ),
    "triplet": Recipe(
        lambda o: L.TripletMarginLoss(
            margin=_margin(o, 0.2),
            miner=miners.TripletMarginMiner(margin=_margin(o, 0.2), type_of_triplets="semihard"),
        ),
        classifier=False,
        pairs=True,
        description="triplet margin loss, FaceNet semi-hard mining",
    ),
    "contrastive": Recipe(
        lambda o: L.ContrastiveLoss(), classifier=False, pairs=True,
        description="contrastive loss (pos margin 0, neg margin 1)",
    ),
    "multi-similarity": Recipe(
        lambda o: L.MultiSimilarityLoss(miner=miners.MultiSimilarityMiner()),
        classifier=False, pairs=True, description="multi-similarity loss and miner",
    ),
    "supcon": Recipe(
        lambda o: L.SupConLoss(), classifier=False, pairs=True,
        description="supervised contrastive loss",
    ),
    "ntxent": Recipe(
        lambda o: L.NTXentLoss(), classifier=False, pairs=True,
        description="NT-Xent with same-class positives",
    ),
    "circle": Recipe(
        lambda o: keras.losses.Circle(), classifier=False, pairs=True, unit_norm=True,
        description="keras.losses.Circle on unit-normalised embeddings",
    ),
}  # fmt: skip


def build_model(
    name: str, backbone: keras.Model, num_classes: int, options: Options | None = None
) -> tuple[ClusterModel, keras.losses.Loss, Recipe]:
    """A `ClusterModel` and the loss to compile it with, for the loss `name`."""
    if name not in RECIPES:
        raise ValueError(f"`loss` must be one of {sorted(RECIPES)}; got {name!r}.")
    options = options or {}
    recipe = RECIPES[name]
    if recipe.unit_norm:
        backbone = keras.Sequential(
            [backbone, keras.layers.UnitNormalization()], name=f"{backbone.name}_unit"
        )
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
