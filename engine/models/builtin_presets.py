"""Offline model presets: the real diffusers/transformers classes with seeded random weights.

No weights can be downloaded here, so every built-in preset is constructed from the same
classes as the checkpoint it stands in for, saved with ``save_pretrained`` into a cache
directory on first use, and from then on loaded through exactly the same
``from_pretrained`` path as a real checkpoint:

- ``tiny`` / ``tiny-i2v``: Wan 2.1 text- and image-to-video;
- ``tiny-wan22-moe`` / ``tiny-wan22-moe-i2v``: Wan 2.2 A14B's layout, two experts and a boundary;
- ``tiny-wan22-ti2v``: Wan 2.2 TI2V-5B's, the 16x VAE and per-token timesteps, both tasks;
- ``tiny-ltx``: LTX-Video, both tasks, with a timestep-conditioned VAE;
- ``bench``: Wan 2.1 sized for CPU load tests.

The tiny Wan presets share their UMT5 encoder, and the Wan 2.1-VAE ones their VAE, byte
for byte, as the real Wan checkpoints do: an app serving several of them deploys each
shared stage once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.families.ltx.random_checkpoint import RandomLTXArchitecture, save_random_ltx_pipeline
from engine.families.ltx.traits import LTX_DEFAULT_NEGATIVE_PROMPT
from engine.families.wan.random_checkpoint import RandomWanArchitecture, save_random_wan_pipeline
from engine.families.wan.traits import WAN_DEFAULT_NEGATIVE_PROMPT
from engine.models.model_spec import GenerationDefaults, Task
from engine.models.preset_cache import build_once

# Bump when the construction below changes, so caches built by older code are not reused.
BUILDER_VERSION = 4
PRESET_METADATA_FILE = "videoserve.json"

T2V, I2V = frozenset({Task.TEXT_TO_VIDEO}), frozenset({Task.IMAGE_TO_VIDEO})
BOTH_TASKS = T2V | I2V


@dataclass(frozen=True)
class BuiltinPreset:
    name: str
    description: str
    family: str
    tasks: frozenset[Task]
    defaults: GenerationDefaults
    build: Callable[[Path], None]  # writes the diffusers-format directory


# Shared by every tiny Wan preset: the same seeds and sizes give byte-identical components.
_TINY_TEXT = dict(text_seed=20250101, vocab_size=128, text_dim=32, text_layers=2, text_heads=2, text_d_kv=16,
                  text_d_ff=64)
_WAN21_VAE = dict(vae_seed=20250111, vae_base_dim=3)
# 4 heads and an FFN width divisible by 4: the parallel DiT tests split them over 2 and 4 ranks.
_TINY_DIT = dict(num_attention_heads=4, attention_head_dim=12, ffn_dim=32, num_layers=2)


def _tiny_defaults(**overrides) -> GenerationDefaults:
    values = dict(width=32, height=32, num_frames=9, num_inference_steps=4, guidance_scale=5.0, fps=16,
                  flow_shift=3.0, negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)
    return GenerationDefaults(**{**values, **overrides})


def _wan(arch: RandomWanArchitecture, defaults: GenerationDefaults) -> Callable[[Path], None]:
    return lambda directory: save_random_wan_pipeline(arch, defaults.flow_shift, directory)


def _wan_preset(name: str, description: str, tasks: frozenset[Task], defaults: GenerationDefaults,
                **arch) -> BuiltinPreset:
    task = Task.IMAGE_TO_VIDEO if tasks == I2V else Task.TEXT_TO_VIDEO
    return BuiltinPreset(name, description, "wan", tasks, defaults, _wan(RandomWanArchitecture(task=task, **arch), defaults))


_TINY_MOE_DEFAULTS = _tiny_defaults(guidance_scale=4.0, guidance_scale_2=3.0)
_TINY_TI2V_DEFAULTS = _tiny_defaults(fps=24, flow_shift=5.0)
_TINY_LTX_DEFAULTS = GenerationDefaults(width=32, height=32, num_frames=9, num_inference_steps=4, guidance_scale=3.0,
                                        fps=25, flow_shift=None, negative_prompt=LTX_DEFAULT_NEGATIVE_PROMPT,
                                        decode_timestep=0.05, decode_noise_scale=0.025)
_BENCH_DEFAULTS = GenerationDefaults(width=128, height=128, num_frames=17, num_inference_steps=10, guidance_scale=5.0,
                                     fps=16, flow_shift=3.0, negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)

_PRESETS = [
    _wan_preset("tiny", "random-weight Wan 2.1 text-to-video, for tests and the offline demo", T2V, _tiny_defaults(),
                dit_seed=20250102, **_TINY_TEXT, **_WAN21_VAE, **_TINY_DIT),
    _wan_preset("tiny-i2v", "random-weight Wan 2.1 image-to-video (CLIP image embeds), for tests", I2V,
                _tiny_defaults(), dit_seed=20250103, image_seed=20250104, **_TINY_TEXT, **_WAN21_VAE, **_TINY_DIT),
    _wan_preset("tiny-wan22-moe", "random-weight Wan 2.2 A14B-style text-to-video: two experts, boundary 0.875",
                T2V, _TINY_MOE_DEFAULTS, dit_seed=20250105, boundary_ratio=0.875, **_TINY_TEXT, **_WAN21_VAE,
                **_TINY_DIT),
    _wan_preset("tiny-wan22-moe-i2v", "random-weight Wan 2.2 A14B-style image-to-video: two experts, no CLIP, "
                "boundary 0.9", I2V, _TINY_MOE_DEFAULTS, dit_seed=20250106, boundary_ratio=0.9, image_encoder=False,
                **_TINY_TEXT, **_WAN21_VAE, **_TINY_DIT),
    _wan_preset("tiny-wan22-ti2v", "random-weight Wan 2.2 TI2V-5B-style text- and image-to-video: 16x VAE, "
                "per-token timesteps", BOTH_TASKS, _TINY_TI2V_DEFAULTS, dit_seed=20250107, vae_seed=20250112,
                vae="2.2", vae_base_dim=8, expand_timesteps=True, **_TINY_TEXT, **_TINY_DIT),
    BuiltinPreset("tiny-ltx", "random-weight LTX-Video text- and image-to-video, timestep-conditioned VAE", "ltx",
                  BOTH_TASKS, _TINY_LTX_DEFAULTS,
                  lambda directory: save_random_ltx_pipeline(
                      RandomLTXArchitecture(text_seed=20250121, dit_seed=20250122, vae_seed=20250123), directory)),
    # Sized so that one DiT forward at the default size costs ~50-200 ms on a 2-core CPU:
    # big enough that batching and scheduling effects are measurable, small enough to
    # load-test on a laptop.
    _wan_preset("bench", "random-weight Wan 2.1 text-to-video sized for CPU load tests", T2V, _BENCH_DEFAULTS,
                text_seed=20250103, dit_seed=20250104, vae_seed=20250105, vocab_size=256, text_dim=64,
                text_layers=2, text_heads=4, text_d_kv=16, text_d_ff=128, num_attention_heads=4,
                attention_head_dim=64, ffn_dim=1024, num_layers=8, vae_base_dim=4),
]
BUILTIN_PRESETS: dict[str, BuiltinPreset] = {preset.name: preset for preset in _PRESETS}


def builtin_preset_dir(name: str, cache_dir: Path) -> Path:
    """Return the preset's diffusers-format directory, building it on first use."""
    preset = BUILTIN_PRESETS[name]
    target = Path(cache_dir) / "presets" / f"{name}-v{BUILDER_VERSION}"
    return build_once(target, lambda directory: _build(preset, directory), PRESET_METADATA_FILE)


def _build(preset: BuiltinPreset, directory: Path) -> None:
    preset.build(directory)
    metadata = {
        "name": preset.name,
        "description": preset.description,
        "builder_version": BUILDER_VERSION,
        "defaults": asdict(preset.defaults),
    }
    (Path(directory) / PRESET_METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
