"""``engine/quality/evaluation.py`` and ``videoserve eval``: scores over a prompt set."""

from __future__ import annotations

import json

import numpy as np

from engine.quality.evaluation import EvalSettings, evaluate
from engine.toy_world.grammar import held_out_prompts, parse_prompt
from engine.toy_world.render import render_clip


def _renderer(fields: dict) -> np.ndarray:
    """A 'model' that draws exactly what the prompt says: the detector's known answers."""
    return render_clip(parse_prompt(fields["prompt"]), seed=fields["seed"])


def test_a_model_that_draws_the_prompt_scores_full_adherence_and_little_flicker():
    prompts = held_out_prompts()[:6]
    result = evaluate(_renderer, prompts, EvalSettings(seeds=(0, 1)))
    assert result.clips == 12
    assert result.adherence["colour_and_motion"] == 1.0 and result.adherence["full"] == 1.0
    assert result.failures == ()
    assert 0 <= result.flicker < 1.0


def test_a_model_that_ignores_the_prompt_scores_low_and_names_the_failures():
    still = np.zeros((17, 64, 64, 3), dtype=np.uint8)
    still[:, 20:40, 20:40] = (230, 40, 40)  # a red square that never moves
    result = evaluate(lambda fields: still, held_out_prompts()[:4], EvalSettings(num_inference_steps=3))
    assert result.adherence["colour_and_motion"] == 0.0
    assert len(result.failures) == 4 and all("(seed 0)" in failure for failure in result.failures)


def test_prompts_outside_the_grammar_get_flicker_only():
    result = evaluate(lambda fields: np.zeros((5, 16, 16, 3), dtype=np.uint8), ["a cat surfing"], EvalSettings())
    assert result.adherence is None and result.flicker == 0.0


def test_the_eval_command_scores_the_shipped_toy_model(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    output = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "--model", "toy", "--limit", "2", "--steps", "2", "--steps", "3",
                                      "--guidance", "1", "--output", str(output), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("colour+motion") == 2  # one line per setting
    saved = json.loads(output.read_text())
    assert [entry["settings"]["num_inference_steps"] for entry in saved["results"]] == [2, 3]
    assert all(entry["clips"] == 2 and entry["adherence"] is not None for entry in saved["results"])
