"""The whole compression pipeline — distill, prune, quantize, export, evaluate — from one recipe file.

``kdlib.pipeline.run("recipes/fashion_mnist.toml", "runs/fashion")`` and ``kdlib compress recipes/fashion_mnist.toml``
run the same thing: :mod:`~kdlib.pipeline.recipe` reads and checks the recipe, :mod:`~kdlib.pipeline.stages`
does each stage and saves its model, :mod:`~kdlib.pipeline.runner` keeps the output folder resumable,
:mod:`~kdlib.pipeline.measure` reloads and times every model, :mod:`~kdlib.pipeline.report` writes the report,
and :mod:`~kdlib.pipeline.sweep` runs a grid of settings and finds the Pareto fronts.
"""

from kdlib.pipeline.recipe import ORDER, SECTIONS, STAGES, RecipeError, check_recipe, load_recipe, set_value
from kdlib.pipeline.runner import OutputConflict, run
from kdlib.pipeline.sweep import pareto_front, sweep

__all__ = [
    "ORDER",
    "OutputConflict",
    "RecipeError",
    "SECTIONS",
    "STAGES",
    "check_recipe",
    "load_recipe",
    "pareto_front",
    "run",
    "set_value",
    "sweep",
]
