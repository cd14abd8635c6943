"""The toy world model's training code: exact shortcuts, a whole (tiny) run through the CLI, and
the shipped checkpoint loading through from_pretrained like any other."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from training.toy_world.architecture import (
    GRAMMAR_WORDS,
    ToyArchitecture,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
)
from engine.families.wan.compact_text_attention import compact_text_batch, install, uninstall
from training.toy_world.prompt_embeddings import PromptEmbeddings

SMALL = ToyArchitecture(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64)


def test_every_grammar_word_is_one_token():
    tokenizer = build_tokenizer(SMALL)
    for word in GRAMMAR_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    # Outside the grammar a word still tokenizes (into characters): never an error.
    assert len(tokenizer("zebra", add_special_tokens=False).input_ids) > 1


def test_compact_cross_attention_equals_the_full_512_positions():
    prompts = PromptEmbeddings(build_tokenizer(SMALL), build_text_encoder(SMALL))
    texts = ["a red circle moves up on a black background", "",
             "a blue square grows and a white triangle moves down on a gray background"]
    embeddings = [prompts(text) for text in texts]
    transformer = build_transformer(SMALL).eval()
    latents = torch.randn(len(texts), SMALL.z_dim, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    timestep = torch.rand(len(texts), 2 * 4 * 4, generator=torch.Generator().manual_seed(1)) * 1000
    padded = torch.zeros(len(texts), 512, SMALL.text_dim)  # what WanPipeline hands the DiT
    for row, embedding in enumerate(embeddings):
        padded[row, :embedding.shape[0]] = embedding
    with torch.no_grad():
        full = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=padded,
                           return_dict=False)[0]
        states, bias = compact_text_batch(embeddings, 512)
        assert states.shape[1] == max(e.shape[0] for e in embeddings) + 1
        for processor in install(transformer):
            processor.key_bias = bias
        compact = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=states,
                              return_dict=False)[0]
        uninstall(transformer)
        again = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=padded,
                            return_dict=False)[0]
    assert torch.allclose(compact, full, atol=1e-5), (compact - full).abs().max()
    assert torch.equal(again, full)


def test_object_loss_weights_are_one_on_the_background_and_highest_on_the_object():
    from training.toy_world.dit_training import object_loss_weights

    generator = torch.Generator().manual_seed(0)
    background = torch.randn(2, SMALL.z_dim, 1, 1, 1, generator=generator)
    clean = background.expand(2, SMALL.z_dim, 3, 8, 8).clone()
    clean += 0.05 * torch.randn(clean.shape, generator=generator)  # VAE noise on a flat background
    clean[0, :, :, 2:4, 5:7] += 3.0  # an object, 12 units from the background over 16 channels
    clean[1, :, 1, 6, 0] += 0.75  # a faint blot, 3 units away: half way up the ramp
    weights = object_loss_weights(clean, 3.0)
    assert weights.shape == (2, 1, 3, 8, 8)
    object_mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    object_mask[:, 2:4, 5:7] = True
    assert torch.allclose(weights[0, 0][object_mask], torch.tensor(4.0))
    assert torch.allclose(weights[0, 0][~object_mask], torch.tensor(1.0))
    assert 2.0 < weights[1, 0, 1, 6, 0] < 3.0
    assert torch.equal(object_loss_weights(clean, 0.0), torch.ones(2, 1, 3, 8, 8))


def test_prompt_embeddings_are_the_served_text_encoders_without_the_padding():
    from diffusers import WanPipeline

    tokenizer, text_encoder = build_tokenizer(SMALL), build_text_encoder(SMALL)
    prompt = "a yellow triangle shrinks on a gray background"
    with torch.no_grad():  # as the served text encoder runs it
        served, _ = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None,
                                scheduler=None).encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                                              max_sequence_length=512, device=torch.device("cpu"))
    kept = PromptEmbeddings(tokenizer, text_encoder)(prompt)
    length = kept.shape[0]
    assert length == len(prompt.split()) + 1  # one token a word, and </s>
    assert torch.equal(served[0, :length], kept)
    assert not served[0, length:].any()


def _train_small(tmp_path, monkeypatch, name: str):
    from typer.testing import CliRunner

    import training.cli as training_cli

    # The shipped sizes, with fewer layers, so the run takes seconds.
    monkeypatch.setattr("training.toy_world.architecture.ToyArchitecture",
                        lambda: dataclasses.replace(SMALL, vae_base_dim=8))
    output = tmp_path / name
    result = CliRunner().invoke(training_cli.app, [
        "toy", "--output", str(output), "--log-dir", str(tmp_path / f"{name}-logs"), "--vae-image-steps", "2",
        "--vae-clip-steps", "1", "--clips", "4", "--dit-steps", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return output


def test_training_is_reproducible_byte_for_byte(tmp_path, monkeypatch):
    first, second = _train_small(tmp_path, monkeypatch, "a"), _train_small(tmp_path, monkeypatch, "b")
    weights = sorted(path.relative_to(first) for path in first.rglob("*.safetensors"))
    assert {str(path.parent) for path in weights} == {"text_encoder", "transformer", "vae"}
    for path in weights:
        assert (first / path).read_bytes() == (second / path).read_bytes(), path


def test_a_tiny_training_run_through_the_cli_saves_a_checkpoint_the_engine_serves(tmp_path, monkeypatch):
    from engine.models.model_registry import resolve_model
    from engine.request_validation import validate_generation
    from engine.staged_pipeline import StagedPipeline

    output = _train_small(tmp_path, monkeypatch, "toy")
    log = [json.loads(line) for line in (tmp_path / "toy-logs" / "toy-training.jsonl").read_text().splitlines()]
    assert [entry["phase"] for entry in log] == ["vae"] * 3 + ["dit"] * 3
    assert all(np.isfinite(entry.get("loss", entry.get("l1"))) for entry in log)
    metadata = json.loads((output / "videoserve.json").read_text())
    assert metadata["training"]["dit"]["steps"] == 3 and metadata["defaults"]["fps"] == 8
    spec = resolve_model(str(output), tmp_path / "cache")
    assert spec.name == "toy" and {task.value for task in spec.tasks} == {"t2v", "i2v"}
    request = validate_generation({"prompt": "a red circle moves up on a black background", "seed": 3,
                                   "num_inference_steps": 2}, spec)
    frames = StagedPipeline.load(spec).generate(request).frames
    assert tuple(frames.shape) == (17, 64, 64, 3)


@pytest.fixture(scope="module")
def shipped_toy(tmp_path_factory):
    from engine.models.model_registry import resolve_model

    return resolve_model("toy", tmp_path_factory.mktemp("cache"))


def test_the_shipped_toy_model_loads_through_from_pretrained_with_its_own_defaults(shipped_toy):
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    from engine.models.shipped_presets import SHIPPED_PRESETS

    directory = SHIPPED_PRESETS["toy"]
    pipeline = WanPipeline.from_pretrained(directory)
    assert isinstance(pipeline.transformer, WanTransformer3DModel) and isinstance(pipeline.vae, AutoencoderKLWan)
    assert pipeline.config.expand_timesteps  # one checkpoint, both tasks (Wan 2.2 TI2V layout)
    weights = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    assert weights <= 25 * 1024 * 1024
    defaults = shipped_toy.defaults
    assert (defaults.width, defaults.height, defaults.num_frames, defaults.fps) == (64, 64, 17, 8)
    assert defaults.num_frames >= 17 and defaults.fps >= 8 and min(defaults.width, defaults.height) >= 64
    assert {task.value for task in shipped_toy.tasks} == {"t2v", "i2v"}
