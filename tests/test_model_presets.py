"""Model registry: built-in presets, named hub presets, local directories."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from engine.builtin_presets import BUILDER_VERSION, PRESET_METADATA_FILE
from engine.model_registry import HUB_PRESETS, ModelNotFoundError, resolve_model
from engine.model_spec import Task
from tests.conftest import run_python


def _tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_builtin_presets_are_deterministic_across_processes(tmp_path):
    # Two fresh interpreters stand in for two machines.
    digests = []
    for name in ("a", "b"):
        code = f"from engine.model_registry import resolve_model; print(resolve_model('tiny-i2v', '{tmp_path / name}').source)"
        result = run_python(code)
        assert result.returncode == 0, result.stderr
        digests.append(_tree_digest(Path(result.stdout.strip().splitlines()[-1])))
    assert digests[0] == digests[1]
    assert any(name.endswith(".safetensors") for name in digests[0])


@pytest.mark.parametrize("name,task", [("tiny", Task.TEXT_TO_VIDEO), ("tiny-i2v", Task.IMAGE_TO_VIDEO)])
def test_builtin_preset_is_a_real_diffusers_checkpoint(preset_cache, name, task):
    from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    spec = resolve_model(name, preset_cache)
    assert spec.task is task
    assert Path(spec.source).name == f"{name}-v{BUILDER_VERSION}"
    pipeline = DiffusionPipeline.from_pretrained(spec.source)
    assert type(pipeline).__name__ == ("WanPipeline" if task is Task.TEXT_TO_VIDEO else "WanImageToVideoPipeline")
    assert isinstance(pipeline.transformer, WanTransformer3DModel)
    assert isinstance(pipeline.vae, AutoencoderKLWan)
    assert isinstance(pipeline.text_encoder, UMT5EncoderModel)
    assert isinstance(pipeline.scheduler, UniPCMultistepScheduler)
    assert pipeline.scheduler.config.flow_shift == spec.defaults.flow_shift
    if task is Task.IMAGE_TO_VIDEO:
        assert type(pipeline.image_encoder).__name__ == "CLIPVisionModel"


def test_builtin_preset_is_built_once(preset_cache):
    first = resolve_model("tiny", preset_cache)
    weights = next(Path(first.source).rglob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert resolve_model("tiny", preset_cache).source == first.source
    assert weights.stat().st_mtime_ns == stamp


def test_bench_preset_records_defaults_and_limits(preset_cache):
    spec = resolve_model("bench", preset_cache)
    metadata = json.loads((Path(spec.source) / PRESET_METADATA_FILE).read_text())
    assert metadata["defaults"]["width"] == spec.defaults.width == 128
    assert spec.defaults.num_inference_steps == metadata["defaults"]["num_inference_steps"]
    assert spec.limits.max_size == metadata["limits"]["max_size"]
    assert (Path(spec.source) / "transformer" / "config.json").is_file()


def test_named_presets_point_at_the_diffusers_repos():
    assert {name: preset.repo_id for name, preset in HUB_PRESETS.items()} == {
        "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "wan2.1-t2v-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "wan2.1-i2v-14b-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    }


def test_named_preset_offline_without_cache_is_a_clear_error(tmp_path):
    code = textwrap.dedent(
        """
        from engine.model_registry import ModelNotFoundError, resolve_model
        try:
            resolve_model("wan2.1-t2v-14b", "unused")
        except ModelNotFoundError as error:
            print("REFUSED", error)
        """
    )
    result = run_python(code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert "REFUSED" in result.stdout and "Wan-AI/Wan2.1-T2V-14B-Diffusers" in result.stdout
    assert "local Hugging Face cache" in result.stdout


def test_named_preset_loads_from_the_local_hub_cache_offline(preset_cache, tmp_path):
    # Lay a checkpoint out exactly as huggingface_hub caches a download, then resolve and
    # load the named preset with the hub offline: no network, same from_pretrained path.
    tiny = Path(resolve_model("tiny", preset_cache).source)
    repo = tmp_path / "hub" / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = textwrap.dedent(
        """
        from engine.model_registry import resolve_model
        from engine.stages.text_encoder import TextEncoder
        spec = resolve_model("wan2.1-t2v-1.3b", "unused")
        embeds = TextEncoder(spec).encode_text("a cat")
        print("SPEC", spec.source, spec.defaults.width, spec.defaults.height, spec.defaults.flow_shift, tuple(embeds.shape))
        """
    )
    result = run_python(code, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("SPEC"))
    assert line == "SPEC Wan-AI/Wan2.1-T2V-1.3B-Diffusers 832 480 3.0 (1, 512, 32)"


def test_plain_wan_directory_takes_defaults_from_its_own_configs(preset_cache, tmp_path):
    checkpoint = tmp_path / "my-wan-720p"
    shutil.copytree(resolve_model("tiny-i2v", preset_cache).source, checkpoint)
    (checkpoint / PRESET_METADATA_FILE).unlink()
    scheduler_config = checkpoint / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_config.read_text())
    scheduler_config.write_text(json.dumps(config | {"flow_shift": 5.0}))
    spec = resolve_model(str(checkpoint), preset_cache)
    assert spec.name == "my-wan-720p"
    assert spec.source == str(checkpoint)
    assert spec.task is Task.IMAGE_TO_VIDEO
    assert spec.defaults.flow_shift == 5.0
    assert (spec.defaults.width, spec.defaults.height, spec.defaults.num_frames) == (1280, 720, 81)
    assert spec.geometry.latent_channels == 16 and spec.geometry.temporal_factor == 4


def test_unknown_models_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a preset"):
        resolve_model("wan9-ultra", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a diffusers-format Wan directory"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
