"""Weight memory of the supported models, exactly, from their published architectures.

Each component is built from its published config with diffusers' / transformers' own
class on PyTorch's ``meta`` device (no memory, no download) and its parameters counted,
in the dtype videoserve serves it in on a GPU (engine/stage_placement.py: the DiT and
the text encoder in bfloat16, the VAE and the CLIP image encoder in float32). For a
Denoiser gang of N GPUs it gives each rank's weight bytes: tensor parallel keeps 1/N of
the linears engine/parallel/tensor_parallel.py splits (and of their norms) and all of
the rest; Ulysses keeps a whole copy on every rank. Activations, the CUDA context and
the allocator's reserve come on top.

    python -m benchmarks.model_memory [--ranks 4] [--json out.json]

The configs are the ``config.json`` files of the Diffusers-format Hugging Face repos
named in HUB_PRESETS (engine/models/model_registry.py), written out here because no hub can be
reached from this machine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
BF16, FP32 = 2, 4

_UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu")
_T5_XXL = {**_UMT5_XXL, "vocab_size": 32128}
_CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=1024)
_WAN_DIT = dict(patch_size=(1, 2, 2), attention_head_dim=128, freq_dim=256, text_dim=4096, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
_WAN_14B = dict(_WAN_DIT, num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16, out_channels=16)
_WAN21_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                  temperal_downsample=[False, True, True])
_WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12, is_residual=True,
                  patch_size=2, scale_factor_spatial=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                  temperal_downsample=[False, True, True])
_LTX_DIT = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096)


@dataclass(frozen=True)
class Component:
    stage: str  # text_encoder, image_encoder, transformer, vae
    library: str  # "diffusers" or "transformers"
    class_name: str
    config: dict[str, Any]
    dtype_bytes: int
    copies: int = 1  # two experts: two transformers of one config


MODELS: dict[str, list[Component]] = {
    "wan2.1-t2v-1.3b": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("transformer", "diffusers", "WanTransformer3DModel",
                  dict(_WAN_DIT, num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, out_channels=16),
                  BF16),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN21_VAE, FP32),
    ],
    "wan2.1-t2v-14b": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("transformer", "diffusers", "WanTransformer3DModel", _WAN_14B, BF16),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN21_VAE, FP32),
    ],
    "wan2.1-i2v-14b-720p": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("image_encoder", "transformers", "CLIPVisionModel", _CLIP_VIT_H, FP32),
        Component("transformer", "diffusers", "WanTransformer3DModel",
                  dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120), BF16),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN21_VAE, FP32),
    ],
    "wan2.2-t2v-a14b": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("transformer", "diffusers", "WanTransformer3DModel", _WAN_14B, BF16, copies=2),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN21_VAE, FP32),
    ],
    "wan2.2-i2v-a14b": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("transformer", "diffusers", "WanTransformer3DModel", dict(_WAN_14B, in_channels=36), BF16,
                  copies=2),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN21_VAE, FP32),
    ],
    "wan2.2-ti2v-5b": [
        Component("text_encoder", "transformers", "UMT5EncoderModel", _UMT5_XXL, BF16),
        Component("transformer", "diffusers", "WanTransformer3DModel",
                  dict(_WAN_DIT, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48,
                       out_channels=48), BF16),
        Component("vae", "diffusers", "AutoencoderKLWan", _WAN22_VAE, FP32),
    ],
    "ltx-video": [
        Component("text_encoder", "transformers", "T5EncoderModel", _T5_XXL, BF16),
        Component("transformer", "diffusers", "LTXVideoTransformer3DModel", _LTX_DIT, BF16),
        Component("vae", "diffusers", "AutoencoderKLLTXVideo", {}, FP32),
    ],
}


def _build_on_meta(component: Component):
    import torch

    if component.library == "transformers":
        import transformers

        config_class = {"UMT5EncoderModel": "UMT5Config", "T5EncoderModel": "T5Config",
                        "CLIPVisionModel": "CLIPVisionConfig"}[component.class_name]
        config = getattr(transformers, config_class)(**component.config)
        with torch.device("meta"):
            return getattr(transformers, component.class_name)(config)
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, component.class_name)(**component.config)


def _tensor_parallel_share(transformer, ranks: int) -> tuple[int, int]:
    """(parameters one rank of a tensor-parallel gang holds, all parameters) of a Wan transformer."""
    from torch.distributed.tensor.parallel import ColwiseParallel

    from engine.parallel.tensor_parallel import block_parallel_plan, sharded_norm_names

    split: dict[str, int] = {}  # parameter name -> divisor
    for index, block in enumerate(transformer.blocks):
        for path, style in block_parallel_plan(block).items():
            module = block.get_submodule(path)
            split[f"blocks.{index}.{path}.weight"] = ranks
            if module.bias is not None and isinstance(style, ColwiseParallel):  # a row-split bias stays whole
                split[f"blocks.{index}.{path}.bias"] = ranks
        for name in ("attn1", "attn2"):
            for norm in sharded_norm_names(getattr(block, name)):
                split[f"blocks.{index}.{name}.{norm}.weight"] = ranks
    total = per_rank = 0
    for name, parameter in transformer.named_parameters():
        total += parameter.numel()
        per_rank += parameter.numel() // split.get(name, 1)
    return per_rank, total


def model_memory(ranks: int) -> dict[str, dict[str, Any]]:
    report = {}
    for model, components in MODELS.items():
        entry: dict[str, Any] = {"components": {}}
        for component in components:
            module = _build_on_meta(component)
            parameters = sum(parameter.numel() for parameter in module.parameters())
            row = {"class": component.class_name, "copies": component.copies,
                   "parameters": parameters * component.copies,
                   "gib": parameters * component.copies * component.dtype_bytes / GIB,
                   "dtype": "bfloat16" if component.dtype_bytes == BF16 else "float32"}
            if component.stage == "transformer":
                row["ulysses_gib_per_rank"] = row["gib"]  # every rank holds the whole model
                if component.class_name == "WanTransformer3DModel":
                    per_rank, _ = _tensor_parallel_share(module, ranks)
                    row["tensor_parallel_gib_per_rank"] = per_rank * component.copies * component.dtype_bytes / GIB
            entry["components"][component.stage] = row
        entry["total_gib"] = sum(row["gib"] for row in entry["components"].values())
        report[model] = entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=4, help="GPUs in one Denoiser gang")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    report = model_memory(args.ranks)
    header = (f"{'model':22} {'text enc':>9} {'image enc':>9} {'DiT':>8} {'VAE':>6} {'total':>7} "
              f"{'DiT/GPU TP' + str(args.ranks):>12} {'DiT/GPU SP' + str(args.ranks):>12}   (GiB)")
    print(header)
    for model, entry in report.items():
        rows = entry["components"]

        def gib(stage, key="gib"):
            return f"{rows[stage][key]:.2f}" if stage in rows and key in rows[stage] else "-"

        print(f"{model:22} {gib('text_encoder'):>9} {gib('image_encoder'):>9} {gib('transformer'):>8} {gib('vae'):>6} "
              f"{entry['total_gib']:>7.2f} {gib('transformer', 'tensor_parallel_gib_per_rank'):>12} "
              f"{gib('transformer', 'ulysses_gib_per_rank'):>12}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"ranks": args.ranks, "models": report}, handle, indent=2)


if __name__ == "__main__":
    main()
