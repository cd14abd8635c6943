"""Placement of a Denoiser replica that spans several ranks (one accelerator each).

The parallel degree (``AppConfig.parallel.degree``: cfg x sequence x tensor ranks, whatever
modes make it up) is the one knob. The replica's Serve options get one placement-group
bundle per rank, packed on one node (``STRICT_PACK``: the ranks talk over NVLink / shared
memory every step). Rank 0 is the replica itself, so its
``ray_actor_options`` must fit the first bundle; ranks 1..N-1 are actors in the others.

The Helm chart derives the same bundles in ``helm/videoserve/templates/_placement.tpl``;
tests/test_helm_chart.py checks the two agree for several degrees.
"""

from __future__ import annotations

from typing import Any

PLACEMENT_STRATEGY = "STRICT_PACK"


class PlacementMismatch(ValueError):
    """A Denoiser's placement-group bundles disagree with the configured parallel degree."""


def rank_bundle(ray_actor_options: dict[str, Any]) -> dict[str, float]:
    """The resources of one rank: what the replica actor itself asks for."""
    bundle: dict[str, float] = {"CPU": ray_actor_options.get("num_cpus", 1)}
    if ray_actor_options.get("num_gpus"):
        bundle["GPU"] = ray_actor_options["num_gpus"]
    bundle.update(ray_actor_options.get("resources") or {})
    return bundle


def derived_placement(degree: int, ray_actor_options: dict[str, Any]) -> dict[str, Any]:
    """Serve deployment options for ``degree`` ranks; nothing extra for a one-rank replica."""
    if degree == 1:
        return {}
    return {
        "placement_group_bundles": [rank_bundle(ray_actor_options) for _ in range(degree)],
        "placement_group_strategy": PLACEMENT_STRATEGY,
    }


def with_denoiser_placement(degree: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with bundles for ``degree`` ranks: derived when absent, refused when they disagree."""
    bundles = options.get("placement_group_bundles")
    if bundles is None:
        return {**options, **derived_placement(degree, options.get("ray_actor_options") or {})}
    if len(bundles) != degree:
        raise PlacementMismatch(
            f"Denoiser placement_group_bundles has {len(bundles)} bundles but parallel degree is {degree}: "
            "one bundle per rank (remove the bundles to have them derived)"
        )
    strategy = options.get("placement_group_strategy", "PACK")
    if degree > 1 and strategy != PLACEMENT_STRATEGY:
        raise PlacementMismatch(f"Denoiser placement_group_strategy must be {PLACEMENT_STRATEGY} for {degree} ranks, "
                                f"not {strategy}")
    # Without ray_actor_options here the code's defaults apply, which Serve itself checks.
    actor = rank_bundle(options["ray_actor_options"]) if options.get("ray_actor_options") else {}
    first = bundles[0]
    short = {name: amount for name, amount in actor.items() if first.get(name, 0) < amount}
    if short:
        raise PlacementMismatch(f"Denoiser ray_actor_options need {short} but the first bundle holds {first}: "
                                "the replica (rank 0) runs in the first bundle")
    accelerators = {bundle.get("GPU", 0) for bundle in bundles}
    if len(accelerators) != 1:
        raise PlacementMismatch(f"Denoiser bundles ask for different GPU counts {sorted(accelerators)}: "
                                "every rank needs the same")
    return options
