"""Model registry: built-in presets, named hub presets, local directories."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from engine.models.builtin_presets import BUILDER_VERSION, PRESET_METADATA_FILE
from engine.models.model_registry import HUB_PRESETS, ModelNotFoundError, resolve_model
from engine.models.model_spec import Task
from tests.support.repo import run_python


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
        code = f"from engine.models.model_registry import resolve_model; print(resolve_model('tiny-i2v', '{tmp_path / name}').source)"
        result = run_python(code)
        assert result.returncode == 0, result.stderr
        digests.append(_tree_digest(Path(result.stdout.strip().splitlines()[-1])))
    assert digests[0] == digests[1]
    assert any(name.endswith(".safetensors") for name in digests[0])


PRESET_CLASSES = {
    # name: (pipeline class, tasks, transformer class, experts, VAE class, text encoder class, image encoder)
    "tiny": ("WanPipeline", {"t2v"}, "WanTransformer3DModel", 1, "AutoencoderKLWan", "UMT5EncoderModel", None),
    "tiny-i2v": ("WanImageToVideoPipeline", {"i2v"}, "WanTransformer3DModel", 1, "AutoencoderKLWan",
                 "UMT5EncoderModel", "CLIPVisionModel"),
    "tiny-wan22-moe": ("WanPipeline", {"t2v"}, "WanTransformer3DModel", 2, "AutoencoderKLWan", "UMT5EncoderModel",
                       None),
    "tiny-wan22-moe-i2v": ("WanImageToVideoPipeline", {"i2v"}, "WanTransformer3DModel", 2, "AutoencoderKLWan",
                           "UMT5EncoderModel", None),
    "tiny-wan22-ti2v": ("WanPipeline", {"t2v", "i2v"}, "WanTransformer3DModel", 1, "AutoencoderKLWan",
                        "UMT5EncoderModel", None),
    "tiny-ltx": ("LTXPipeline", {"t2v", "i2v"}, "LTXVideoTransformer3DModel", 1, "AutoencoderKLLTXVideo",
                 "T5EncoderModel", None),
}


@pytest.mark.parametrize("name", sorted(PRESET_CLASSES))
def test_builtin_preset_is_a_real_diffusers_checkpoint(preset_cache, name):
    from diffusers import DiffusionPipeline

    pipeline_class, tasks, transformer, experts, vae, text_encoder, image_encoder = PRESET_CLASSES[name]
    spec = resolve_model(name, preset_cache)
    assert {task.value for task in spec.tasks} == tasks
    assert spec.pipeline_class == pipeline_class and spec.experts == experts
    assert Path(spec.source).name == f"{name}-v{BUILDER_VERSION}"
    pipeline = DiffusionPipeline.from_pretrained(spec.source)
    assert type(pipeline).__name__ == pipeline_class
    assert type(pipeline.transformer).__name__ == transformer
    assert (getattr(pipeline, "transformer_2", None) is not None) == (experts == 2)
    assert type(pipeline.vae).__name__ == vae
    assert type(pipeline.text_encoder).__name__ == text_encoder
    assert type(getattr(pipeline, "image_encoder", None)).__name__ == (image_encoder or "NoneType")
    assert pipeline.scheduler.config.get("flow_shift", None) == spec.defaults.flow_shift or spec.family == "ltx"
    if experts == 2:
        assert pipeline.config.boundary_ratio == spec.boundary_ratio


def test_tiny_wan_presets_share_their_text_encoder_and_wan21_vae_byte_for_byte(preset_cache):
    from engine.models.component_fingerprint import components_fingerprint

    def fingerprint(name, *components):
        return components_fingerprint(resolve_model(name, preset_cache).source, components)

    wan = ["tiny", "tiny-i2v", "tiny-wan22-moe", "tiny-wan22-moe-i2v", "tiny-wan22-ti2v"]
    assert len({fingerprint(name, "text_encoder", "tokenizer") for name in wan}) == 1
    # Wan 2.2 A14B reuses Wan 2.1's VAE; TI2V has its own 16x one; the DiTs all differ.
    assert len({fingerprint(name, "vae") for name in wan[:4]}) == 1
    assert fingerprint("tiny-wan22-ti2v", "vae") != fingerprint("tiny", "vae")
    assert len({fingerprint(name, "transformer") for name in wan}) == len(wan)
    assert fingerprint("tiny-ltx", "text_encoder", "tokenizer") != fingerprint("tiny", "text_encoder", "tokenizer")


def test_builtin_preset_is_built_once(preset_cache):
    first = resolve_model("tiny", preset_cache)
    weights = next(Path(first.source).rglob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert resolve_model("tiny", preset_cache).source == first.source
    assert weights.stat().st_mtime_ns == stamp


def test_bench_preset_records_its_defaults_and_reads_its_limits_from_the_checkpoint(preset_cache):
    spec = resolve_model("bench", preset_cache)
    metadata = json.loads((Path(spec.source) / PRESET_METADATA_FILE).read_text())
    assert metadata["defaults"]["width"] == spec.defaults.width == 128
    assert spec.defaults.num_inference_steps == metadata["defaults"]["num_inference_steps"]
    assert "limits" not in metadata  # never a preset's choice
    transformer = json.loads((Path(spec.source) / "transformer" / "config.json").read_text())
    assert spec.limits.max_size == transformer["rope_max_seq_len"] * 2 * 8


def test_named_presets_point_at_the_diffusers_repos_with_their_published_settings():
    assert {name: preset.repo_id for name, preset in HUB_PRESETS.items()} == {
        "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "wan2.1-t2v-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        "wan2.1-i2v-14b-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
        "wan2.2-t2v-a14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "wan2.2-i2v-a14b": "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
        "wan2.2-ti2v-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "ltx-video": "Lightricks/LTX-Video",
        "ltx-video-0.9.5": "Lightricks/LTX-Video-0.9.5",
    }
    a14b, ti2v = HUB_PRESETS["wan2.2-t2v-a14b"].defaults, HUB_PRESETS["wan2.2-ti2v-5b"].defaults
    assert (a14b.width, a14b.height, a14b.num_inference_steps, a14b.guidance_scale, a14b.guidance_scale_2) == (
        1280, 720, 40, 4.0, 3.0)
    assert (ti2v.width, ti2v.height, ti2v.num_frames, ti2v.fps) == (1280, 704, 121, 24)
    assert {task.value for task in HUB_PRESETS["wan2.2-ti2v-5b"].tasks} == {"t2v", "i2v"}


def test_named_preset_offline_without_cache_is_a_clear_error(tmp_path):
    code = textwrap.dedent(
        """
        from engine.models.model_registry import ModelNotFoundError, resolve_model
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
        from engine.models.model_registry import resolve_model
        from engine.stages.text_encoder import TextEncoder
        spec = resolve_model("wan2.1-t2v-1.3b", "unused")
        embeds = TextEncoder(spec).encode_text("a cat")
        print("SPEC", spec.source, spec.defaults.width, spec.defaults.height, spec.defaults.flow_shift, tuple(embeds.embeds.shape))
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
    assert spec.tasks == {Task.IMAGE_TO_VIDEO}
    assert spec.defaults.flow_shift == 5.0
    assert (spec.defaults.width, spec.defaults.height, spec.defaults.num_frames) == (1280, 720, 81)
    assert spec.geometry.latent_channels == 16 and spec.geometry.temporal_factor == 4


def test_unknown_models_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a preset"):
        resolve_model("wan9-ultra", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a diffusers-format model directory"):
        resolve_model(str(tmp_path / "empty"), tmp_path)


def test_a_directory_of_an_unsupported_pipeline_lists_the_supported_classes(tmp_path):
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelNotFoundError) as refused:
        resolve_model(str(tmp_path / "flux"), tmp_path)
    message = str(refused.value)
    assert "FluxPipeline" in message
    for supported in ("WanPipeline", "WanImageToVideoPipeline", "LTXPipeline", "LTXImageToVideoPipeline"):
        assert supported in message
