"""The typed option source: each recipe default is its class's (or says why not); every key
round-trips through the command line, `compare` settings and metrics.json's config into the
objects it configures; a misspelt key is rejected everywhere; the docs table is generated."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import pytest

from clusterloss.app.cli.args import config_from_args, recipe_values
from clusterloss.app.cli.main import build_parser
from clusterloss.app.compare import parse_setting
from clusterloss.app.config import TrainConfig
from clusterloss.app.options import Option
from clusterloss.app.recipes import RECIPES, build_model, options_table
from clusterloss.app.runs import _optimizer, _training_data
from clusterloss.data import load_dataset
from clusterloss.models import make_backbone

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = [(name, o) for name, r in RECIPES.items() for o in r.options]


def other_value(option: Option):
    """A valid value that differs from the default."""
    if option.choices:
        return next(c for c in option.choices if c != option.default)
    if option.type is int:
        return max(int(option.low or 1), option.default // 2)
    return option.default / 2 if option.default else 0.25


def config_values(tree, key):
    """Every value stored under `key` in a nested serialized Keras config."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key and not isinstance(v, dict):
                yield v
            yield from config_values(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from config_values(v, key)


@pytest.mark.parametrize("name,option", OPTIONS, ids=[f"{n}-{o.key}" for n, o in OPTIONS])
def test_defaults_are_the_class_defaults_or_say_why(name, option):
    assert option.source is not None
    assert isinstance(option.default, option.type)
    if option.default != option.source_default:
        assert len(option.reason) > 20, f"{name}.{option.key}: a different default needs a reason"
    else:
        assert not option.reason
    assert other_value(option) != option.default


def test_documented_differences():
    """The two deliberate differences of the issue, written down."""
    triplet = {o.key: o for o in RECIPES["triplet"].options}
    assert triplet["margin"].default == 0.2 and triplet["margin"].source_default == 0.05
    center = {o.key: o for o in RECIPES["center"].options}
    assert center["center_weight"].default == 0.1 and center["center_weight"].source_default == 0.01
    assert "0.01" in center["center_weight"].reason and "0.05" in triplet["margin"].reason


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_key_round_trips_into_the_objects(name):
    """argparse -> TrainConfig.options == compare's setting -> metrics.json -> the built
    loss / head / center layer / optimizer / sampler hold the value."""
    recipe = RECIPES[name]
    values = {o.key: other_value(o) for o in recipe.options}
    flags = [x for o in recipe.options for x in (o.flag, str(values[o.key]))]
    args = build_parser().parse_args(["train", "--loss", name, *flags])
    from_cli = config_from_args(args, name, 0, "", recipe_values(args))
    spec = name + (":" + ",".join(f"{k}={v}" for k, v in values.items()) if values else "")
    assert dict(parse_setting(spec).options) == values == from_cli.options
    stored = json.loads(json.dumps(dataclasses.asdict(from_cli)))  # what metrics.json keeps
    assert TrainConfig(**stored) == from_cli

    backbone = make_backbone((8, 8, 1), 4, "mlp")
    model, loss, _ = build_model(name, backbone, 5, stored["options"])
    model.build((None, 8, 8, 1))
    configs = [
        keras.saving.serialize_keras_object(x) for x in (loss, model.head, model.center_loss, *model.loss_layers)
    ]
    config = TrainConfig(**{**stored, "learning_rate": 1e-3})
    for option in recipe.options:
        owner, parameter = option.source
        if option.key == "center_lr":  # the optimizer of trainable centers
            model.center_loss.update = "gradient"
            optimizer = keras.saving.serialize_keras_object(_optimizer(config, model, keras.optimizers.Adam()))
            assert values["center_lr"] in list(config_values(optimizer, "learning_rate"))
        elif option.key == "m_per_class":  # the sampler of pair losses
            data = load_dataset("digits", train_limit=200)
            batch = 5 * values["m_per_class"]  # 5 of the 10 classes per batch
            sampler = _training_data(dataclasses.replace(config, batch_size=batch), data, recipe, 0)
            assert sampler.m == values["m_per_class"]
        else:
            assert values[option.key] in list(config_values(configs, parameter)), (option.key, configs)


def test_misspelt_keys_are_rejected():
    with pytest.raises(
        ValueError,
        match=r"unknown option 'centre_weight' for loss center in 'center:centre_weight=1' \(its options: center_weight",
    ):
        parse_setting("center:centre_weight=1")
    with pytest.raises(ValueError, match=r"unknown option 'margin' for loss softmax \(its options: sample_rate\)"):
        RECIPES["softmax"].resolve("softmax", {"margin": 0.1})
    with pytest.raises(ValueError, match=r"`values` must hold every option of loss center, resolved"):
        build_model("center", make_backbone((4,), 2), 3, {"centre_weight": 1})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--centre-weight", "1"])
    from clusterloss.app.errors import RunError
    from clusterloss.app.runs import train

    with pytest.raises(RunError, match="unknown option 'centre_weight' for loss center"):
        train(TrainConfig(options={"centre_weight": 1}, out="never-made"))
    assert not Path("never-made").exists()


def test_docs_table_is_generated_from_the_recipes():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert options_table() in text, "regenerate with: python -m clusterloss.app.recipes"
