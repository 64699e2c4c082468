"""The loss names of the command line, each a `Recipe`: its typed options, and how they
make the model's head, the loss given to `compile`, the center loss and the batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from clusterloss import losses as L
from clusterloss import miners
from clusterloss.app.options import Option, option, resolve
from clusterloss.layers import (
    ArcFace,
    CenterLoss,
    ClassHead,
    CosFace,
    CosineHead,
    LargeMarginSoftmax,
    NormFace,
    ProxyAnchorHead,
    ProxyNCAHead,
    SoftmaxHead,
    SphereFace,
    SubCenterArcFace,
)
from clusterloss.models import ClusterModel
from clusterloss.optimizers import center_optimizer
from clusterloss.sampling import MPerClassSampler

Values = Mapping[str, Any]


@dataclass(frozen=True)
class Parts:
    """What a recipe makes for `num_classes` classes."""

    loss: keras.losses.Loss | None  # None: the loss comes from `loss_layers` only
    head: keras.layers.Layer | None = None  # None: a Dense logits head if `classifier`
    center: CenterLoss | None = None
    loss_layers: tuple[keras.layers.Layer, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """How to train with one loss name.

    `make(num_classes, values)` builds the parts from the resolved option values.
    `classifier`: the model has a logits head (else the loss applies to the embeddings).
    `pairs`: batches from `MPerClassSampler` (option `m_per_class`).
    `unit_norm`: the backbone ends with `UnitNormalization` (the loss expects it).
    """

    make: Callable[[int, Values], Parts]
    options: tuple[Option, ...] = ()
    description: str = ""
    classifier: bool = True
    pairs: bool = False
    unit_norm: bool = False

    def resolve(self, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """All option values: `given` checked (unknown keys rejected), the rest defaulted."""
        return resolve(self.options, given, f"loss {name}")


def _crossentropy() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


M_PER_CLASS = option(
    MPerClassSampler, "m", "m_per_class", "samples per class in each batch (more when all classes fit in one)", low=2
)


SAMPLE_RATE = option(
    ClassHead,
    "sample_rate",
    help="Partial FC: the share of classes in each "
    "training step (every class of the batch, plus random negatives); 1 = all",
)


SCALE_RULE = option(CosineHead, "scale_rule", help="fixed: the scale s given; adacos: AdaCos's "
                    "scale, adapted every batch (Zhang et al. 2019); adacos-fixed: sqrt(2) "
                    "log(classes - 1)", choices=CosineHead.scale_rules, space=("fixed", "adacos"))  # fmt: skip


def _head_options(cls, margin_help: str | None, margin_space: tuple = ()) -> tuple[Option, ...]:
    if len(cls.scale_rules) > 1:  # AdaCos applies
        found = (
            option(cls, "scale", help="scale s of the cosine logits (scale_rule fixed)", space=(4.0, 64.0, "log")),
            SCALE_RULE,
        )
    else:
        found = (option(cls, "scale", help="scale s of the cosine logits"),)
    if margin_help:
        found += (option(cls, "margin", help=margin_help, space=margin_space),)
    return found + (SAMPLE_RATE,)


def _head_recipe(cls, description: str, margin_help: str | None = None, margin_space: tuple = ()) -> Recipe:
    options = _head_options(cls, margin_help, margin_space)
    return Recipe(lambda n, v: Parts(_crossentropy(), head=cls(n, **v)), options, description)


def _pair_recipe(
    make_loss: Callable[[Values], keras.losses.Loss],
    options: tuple[Option, ...],
    description: str,
    unit_norm: bool = False,
) -> Recipe:
    return Recipe(
        lambda n, v: Parts(make_loss(v)),
        options + (M_PER_CLASS,),
        description,
        classifier=False,
        pairs=True,
        unit_norm=unit_norm,
    )


def _loss_recipe(cls, helps: Mapping[str, str], description: str, unit_norm: bool = False, **overrides: Any) -> Recipe:
    """A pair recipe whose options are `cls`'s parameters of the same names (`helps`: name ->
    help line; `overrides`: name -> extra `option` arguments)."""
    options = tuple(option(cls, key, help=text, **overrides.get(key, {})) for key, text in helps.items())
    return _pair_recipe(lambda v: cls(**{key: v[key] for key in helps}), options, description, unit_norm=unit_norm)


def _margin_options(cls) -> tuple[Option, ...]:
    return (
        option(cls, "margin", help="margin alpha around the boundary beta", space=(0.05, 0.5)),
        option(
            cls,
            "beta",
            help="boundary beta between positive and negative distances (the initial value where it is learned)",
            space=(0.5, 1.6),
        ),
        option(cls, "nu", help="regularization of beta (nu * beta)"),
    )


def _distance_weighted() -> miners.DistanceWeightedMiner:
    """The paper's sampling (Wu et al. 2017); its seed comes from the run's
    `keras.utils.set_random_seed`, so a run repeats."""
    return miners.DistanceWeightedMiner()


def _center(n: int, v: Values) -> Parts:
    layer = CenterLoss(
        weight=v["center_weight"], alpha=v["center_alpha"], update=v["center_update"], name="center_loss"
    )
    return Parts(_crossentropy(), center=layer)


def _triplet(v: Values) -> keras.losses.Loss:
    miner = miners.TripletMarginMiner(margin=v["margin"], type_of_triplets=v["type_of_triplets"])
    return L.TripletMarginLoss(margin=v["margin"], miner=miner)


def _pair_spaces(**spaces: tuple) -> dict[str, dict[str, tuple]]:
    """`_loss_recipe` overrides that give each named option its search space."""
    return {key: {"space": space} for key, space in spaces.items()}


TRIPLET_MARGIN = "FaceNet's 0.2 with semi-hard mining (the class keeps PML's 0.05)."

RECIPES: dict[str, Recipe] = {
    "softmax": Recipe(
        lambda n, v: Parts(_crossentropy(), head=SoftmaxHead(n, name="logits", **v)),
        (SAMPLE_RATE,),
        "crossentropy on a Dense head",
    ),
    "center": Recipe(
        _center,
        (
            option(CenterLoss, "weight", "center_weight", "lambda, the center loss weight",
                   default=0.1, reason="0.1 trains the command line's small networks in a "
                   "few epochs (README, docs/results.md); the class keeps the paper's MNIST "
                   "0.01.", space=(1e-3, 1.0, "log")),
            option(CenterLoss, "alpha", "center_alpha", "Eq. 4 center step", space=(0.05, 1.0)),
            option(CenterLoss, "update", "center_update", "how centers move",
                   choices=("paper", "gradient")),
            option(center_optimizer, "centers", "center_lr",
                   "SGD learning rate of the centers (center_update=gradient)"),
        ),
        "crossentropy + center loss (Wen et al. 2016)",
    ),
    "focal": Recipe(
        lambda n, v: Parts(L.SparseCategoricalFocalCrossentropy(
            gamma=v["focal_gamma"], alpha=v["focal_alpha"], from_logits=True)),
        (
            option(L.SparseCategoricalFocalCrossentropy, "gamma", "focal_gamma", "focusing gamma",
                   space=(0.0, 5.0)),
            option(L.SparseCategoricalFocalCrossentropy, "alpha", "focal_alpha", "class weight alpha"),
        ),
        "sparse focal crossentropy (Lin et al. 2017)",
    ),
    "label-smoothing": Recipe(
        lambda n, v: Parts(L.SparseLabelSmoothingCrossentropy(v["label_smoothing"], from_logits=True)),
        (option(L.SparseLabelSmoothingCrossentropy, "label_smoothing", help="smoothing toward uniform",
                space=(0.0, 0.4)),),
        "crossentropy with label smoothing toward uniform",
    ),
    "arcface": _head_recipe(ArcFace, "ArcFace head", "additive angular margin (radians)",
                            (0.05, 0.8)),
    "cosface": _head_recipe(CosFace, "CosFace head", "additive cosine margin", (0.05, 0.6)),
    "sphereface": _head_recipe(SphereFace, "A-Softmax head", "multiplicative angular margin m",
                               (1, 4)),
    "normface": _head_recipe(NormFace, "normalised softmax"),
    "subcenter-arcface": Recipe(
        lambda n, v: Parts(_crossentropy(), head=SubCenterArcFace(n, **v)),
        _head_options(SubCenterArcFace, "additive angular margin (radians)", (0.05, 0.8)) + (
            option(SubCenterArcFace, "sub_centers", help="sub-centers per class (K)", low=1),
        ),
        "sub-center ArcFace head (Deng et al. 2020), robust to label noise",
    ),
    "lsoftmax": Recipe(
        lambda n, v: Parts(_crossentropy(), head=LargeMarginSoftmax(n, **v)),
        (
            option(LargeMarginSoftmax, "margin", help="multiplicative angular margin m (an "
                   "integer)", low=1),
            option(LargeMarginSoftmax, "scale", help="scale of the logits"),
            option(LargeMarginSoftmax, "base", help="lambda annealing: lambda starts at base "
                   "and decays as base (1 + gamma t)^-power", default=1000.0,
                   reason="without annealing m=4 trains poorly on the command line's small "
                   "networks (digits 1-NN 0.51-0.78 against 0.93-0.94 annealed); the class "
                   "keeps PML's lambda = 0."),
            SAMPLE_RATE,
        ),
        "L-Softmax head (Liu et al. 2016), annealed",
    ),
    "proxy-anchor": Recipe(
        lambda n, v: Parts(L.ProxyAnchorLoss(margin=v["margin"], alpha=v["alpha"]),
                           head=ProxyAnchorHead(n)),
        (
            option(L.ProxyAnchorLoss, "margin", help="margin delta", space=(0.0, 0.5)),
            option(L.ProxyAnchorLoss, "alpha", help="scaling alpha", space=(4.0, 64.0, "log")),
        ),
        "proxy-anchor loss on learned proxies",
    ),
    "proxy-nca": Recipe(
        lambda n, v: Parts(L.ProxyNCALoss(softmax_scale=v["softmax_scale"]), head=ProxyNCAHead(n)),
        (option(L.ProxyNCALoss, "softmax_scale", help="scale of the negative squared distances",
                space=(0.5, 32.0, "log")),),
        "ProxyNCA (Movshovitz-Attias et al. 2017) on learned proxies",
    ),
    "triplet": _pair_recipe(
        _triplet,
        (
            option(L.TripletMarginLoss, "margin", help="triplet margin", default=0.2,
                   reason=TRIPLET_MARGIN, space=(0.01, 1.0, "log")),
            option(miners.TripletMarginMiner, "type_of_triplets", help="which triplets the miner keeps",
                   default="semihard", reason="FaceNet's semi-hard mining (the miner keeps PML's 'all').",
                   choices=("all", "hard", "semihard", "easy"), space=("all", "hard", "semihard")),
        ),
        "triplet margin loss, FaceNet semi-hard mining",
    ),
    "contrastive": _loss_recipe(L.ContrastiveLoss, {"pos_margin": "positive pairs' margin",
                                "neg_margin": "negative pairs' margin"}, "contrastive loss",
                                **_pair_spaces(pos_margin=(0.0, 0.5), neg_margin=(0.2, 2.0))),
    "multi-similarity": _pair_recipe(
        lambda v: L.MultiSimilarityLoss(
            alpha=v["alpha"], beta=v["beta"], base=v["base"],
            miner=miners.MultiSimilarityMiner(epsilon=v["epsilon"])),
        (
            option(L.MultiSimilarityLoss, "alpha", help="positive scale", space=(0.5, 16.0, "log")),
            option(L.MultiSimilarityLoss, "beta", help="negative scale", space=(10.0, 80.0, "log")),
            option(L.MultiSimilarityLoss, "base", help="similarity offset lambda", space=(0.0, 1.0)),
            option(miners.MultiSimilarityMiner, "epsilon", help="miner margin", space=(0.01, 0.5)),
        ),
        "multi-similarity loss and miner",
    ),
    "supcon": _loss_recipe(L.SupConLoss, {"temperature": "softmax temperature"},
                           "supervised contrastive loss",
                           **_pair_spaces(temperature=(0.02, 1.0, "log"))),
    "ntxent": _loss_recipe(L.NTXentLoss, {"temperature": "softmax temperature"},
                           "NT-Xent with same-class positives",
                           **_pair_spaces(temperature=(0.02, 1.0, "log"))),
    "circle": _loss_recipe(L.CircleLoss, {"gamma": "scale gamma", "m": "relaxation margin m"},
                           "circle loss (Sun et al. 2020) on cosine similarities",
                           **_pair_spaces(gamma=(8.0, 256.0, "log"), m=(0.05, 0.5))),
    "lifted": _loss_recipe(L.LiftedStructureLoss, {"neg_margin": "negative pairs' margin",
                           "pos_margin": "positive pairs' margin"},
                           "lifted structure loss (Oh Song et al. 2016)"),
    "generalized-lifted": _loss_recipe(
        L.GeneralizedLiftedStructureLoss,
        {"neg_margin": "negative pairs' margin", "pos_margin": "positive pairs' margin"},
        "generalized lifted structure loss (Hermans et al. 2017)"),
    "margin": _pair_recipe(
        lambda v: L.MarginLoss(margin=v["margin"], beta=v["beta"], nu=v["nu"],
                               miner=_distance_weighted()),
        _margin_options(L.MarginLoss),
        "margin loss with distance-weighted sampling (Wu et al. 2017), fixed beta",
    ),
    "margin-learned": Recipe(
        lambda n, v: Parts(None, loss_layers=(L.MarginLossLayer(
            margin=v["margin"], beta=v["beta"], nu=v["nu"], miner=_distance_weighted(),
            name="margin_loss"),)),
        _margin_options(L.MarginLossLayer) + (
            M_PER_CLASS,
        ),
        "margin loss with a learned global beta (a loss layer of the model)",
        classifier=False, pairs=True,
    ),
    "nca": _loss_recipe(L.NCALoss, {"softmax_scale": "scale of the negative squared distances"},
                        "neighbourhood components analysis (Goldberger et al. 2005)",
                        **_pair_spaces(softmax_scale=(0.5, 32.0, "log"))),
    "tuplet": _loss_recipe(L.TupletMarginLoss, {"margin": "angular margin, degrees (PML's unit)",
                           "scale": "scale of the cosines"}, "tuplet margin loss (Yu and Tao 2019)"),
    "angular": _loss_recipe(L.AngularLoss, {"alpha": "angle alpha, degrees"},
                            "angular loss (Wang et al. 2017) on unit-normalised embeddings",
                            unit_norm=True),
    "fastap": _loss_recipe(L.FastAPLoss, {"num_bins": "histogram bins of the distances"},
                           "FastAP, a differentiable average precision (Cakir et al. 2019)",
                           num_bins={"low": 1}),
}  # fmt: skip


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"`loss` must be one of {sorted(RECIPES)}; got {name!r}.")
    return RECIPES[name]


def build_model(
    name: str, backbone: keras.Model, num_classes: int, values: Mapping[str, Any]
) -> tuple[ClusterModel, keras.losses.Loss, Recipe]:
    """A `ClusterModel` and the loss to compile it with, for the loss `name` and its resolved
    option `values` (`Recipe.resolve`, which `resolve_config` runs: every option, checked)."""
    recipe = get_recipe(name)
    keys = [o.key for o in recipe.options]
    if sorted(values) != sorted(keys):
        raise ValueError(
            f"`values` must hold every option of loss {name}, resolved (Recipe.resolve): "
            f"{', '.join(keys) or 'none'}; got {sorted(values)}."
        )
    parts = recipe.make(num_classes, values)
    if recipe.unit_norm:
        backbone = keras.Sequential([backbone, keras.layers.UnitNormalization()], name=f"{backbone.name}_unit")
    model = ClusterModel(
        backbone,
        num_classes=num_classes if recipe.classifier else None,
        head=parts.head,
        center_loss=parts.center,
        loss_layers=list(parts.loss_layers) or None,
        name="cluster_model",
    )
    return model, parts.loss, recipe


def _cell(value: Any) -> str:
    return "—" if value is None else f"`{value}`"


def _space(o: Option) -> str:
    if not o.space:
        return "—"
    if o.type is str:
        return " \\| ".join(o.space)
    return f"[{o.space[0]:g}, {o.space[1]:g}]" + (" log" if o.log else "")


def options_table() -> str:
    """The docs table: every recipe's options, defaults, and where they come from."""
    lines = [
        "| loss | option | type | default | class default | tuned in (`clusterloss tune`) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, recipe in RECIPES.items():
        if not recipe.options:
            lines.append(f"| `{name}` | — | | | | | {recipe.description} |")
        for o in recipe.options:
            note = o.help + (f" Differs from the class: {o.reason}" if o.reason else "")
            lines.append(
                f"| `{name}` | `{o.flag}` | {o.type.__name__} | {_cell(o.default)} | "
                f"{o.source_name} = {_cell(o.source_default)} | {_space(o)} | {note} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # the table of docs/cli.md
    print(options_table())
