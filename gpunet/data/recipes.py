"""The default training recipe of each built-in data set: ``gpunet train``'s defaults.

One place for them; ``gpunet train --help`` prints them. An option given on the command
line wins over the recipe. The generic values are the defaults of data sets without an
entry of their own.
"""

from __future__ import annotations

GENERIC = {"hidden": [128, 64], "dropout": 0.0, "epochs": 40}

RECIPES = {
    "digits": {},
    # the MNIST-1D paper's MLP reaches about 0.68 test accuracy; 100 unregularized units
    # overfit here (0.60-0.62 after 40-150 Adam epochs), wider layers with dropout reach
    # 0.70-0.71 (seed 0, 100 epochs)
    "mnist1d": {"hidden": [256, 256], "dropout": 0.3, "epochs": 100},
    "synthetic-classification": {},
    "synthetic-regression": {},
}


def recipe(dataset: str) -> dict:
    """The recipe's option values for ``dataset`` (generic ones where it has none)."""
    if dataset not in RECIPES:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {tuple(RECIPES)}")
    return {**GENERIC, **RECIPES[dataset]}


def describe() -> str:
    """The recipes as lines for ``--help``."""
    lines = ["default recipe per data set (options given on the command line win):"]
    for name in RECIPES:
        values = recipe(name)
        hidden = " ".join(map(str, values["hidden"]))
        lines.append(
            f"  {name}: --hidden {hidden} --dropout {values['dropout']} --epochs {values['epochs']}"
        )
    return "\n".join(lines)
