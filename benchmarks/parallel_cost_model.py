"""Per-step cost model of Wan2.1-14B at 720p (81 frames) on a 4xH100 gang: a MODEL, not a measurement.

FLOPs come from diffusers' own WanTransformer3DModel with the 14B config, built on the
meta device and run under torch's FlopCounterMode (no weights, no memory). Bytes per step
come from the same formulas the CPU tests check against the ranks' communication logs
(engine/parallel/tensor_parallel.py, engine/parallel/sequence_parallel.py,
engine/parallel/cfg_parallel.py). Times divide those by H100 SXM datasheet figures,
stated below; real kernels reach less than peak.

Three gangs of the same size: tensor N, sequence N, and cfg 2 x sequence N/2 (each cfg
index runs one of the two rows, its tokens split over N/2 ranks, and the two halves
gather their output rows).

    python -m benchmarks.parallel_cost_model [--degree 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

# Wan2.1-T2V-14B transformer/config.json.
WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6)
TEXT_TOKENS = 512
# 720p, 81 frames: the Wan VAE compresses 4x in time (plus the first frame) and 8x in space.
WIDTH, HEIGHT, FRAMES = 1280, 720, 81
LATENT_SHAPE = (16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)

# H100 SXM5 datasheet: dense BF16 tensor-core peak; NVLink 4 is 900 GB/s per GPU in both
# directions together, 450 GB/s each way, which is what a ring or all-to-all step moves at.
H100_BF16_PEAK_FLOPS = 989e12
NVLINK_GBPS_PER_DIRECTION = 450e9
ASSUMED_MFU = 0.5  # a well-tuned DiT forward on H100; compute time is also shown at peak
BF16_BYTES = 2


@dataclass(frozen=True)
class ParallelModeCost:
    mode: str
    degree: int
    flops_per_rank: float
    payload_bytes_per_rank: int
    wire_bytes_per_rank: float
    nvlink_seconds: float
    compute_seconds_at_peak: float
    compute_seconds_at_assumed_mfu: float

    @property
    def communication_share(self) -> float:
        """NVLink time over compute time at the assumed MFU, if nothing overlapped."""
        return self.nvlink_seconds / self.compute_seconds_at_assumed_mfu


def forward_flops(rows: int) -> int:
    """FLOPs of one 14B forward over ``rows`` latents at 720p/81 frames, counted on the meta device."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**WAN_14B)
        hidden_states = torch.empty(rows, *LATENT_SHAPE)
        timestep = torch.empty(rows)
        text = torch.empty(rows, TEXT_TOKENS, WAN_14B["text_dim"])
    with FlopCounterMode(display=False) as counter:
        model(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=text, return_dict=False)
    return counter.get_total_flops()


def tokens() -> int:
    _, frames, height, width = LATENT_SHAPE
    p_t, p_h, p_w = WAN_14B["patch_size"]
    return (frames // p_t) * (height // p_h) * (width // p_w)


def mode_costs(degree: int) -> tuple[int, list[ParallelModeCost]]:
    from types import SimpleNamespace

    from engine.parallel.cfg_parallel import cfg_parallel_step_bytes
    from engine.parallel.sequence_parallel import sequence_parallel_step_bytes
    from engine.parallel.tensor_parallel import tensor_parallel_step_bytes

    rows = 2  # one request with classifier-free guidance: cond and uncond rows in one forward
    flops = forward_flops(rows)
    config = SimpleNamespace(**WAN_14B, added_kv_proj_dim=None, image_dim=None)
    # What crosses a rank's links: a ring all-reduce sends 2(N-1)/N of its payload, an
    # all-to-all the (N-1)/N that belongs to other ranks.
    tensor = tensor_parallel_step_bytes(config, rows, tokens(), TEXT_TOKENS, 0, BF16_BYTES, degree)
    sequence = sequence_parallel_step_bytes(config, rows, tokens(), BF16_BYTES, degree)
    gangs = [
        ("tensor", tensor, tensor * 2 * (degree - 1) / degree, flops / degree),
        ("sequence", sequence, sequence * (degree - 1) / degree, flops / degree),
    ]
    if degree >= 4 and degree % 2 == 0:
        # cfg 2 x sequence N/2: each cfg index runs one row over N/2 ranks; a rank's FLOPs are
        # one row's over N/2 (a forward's FLOPs are linear in rows). Its own Ulysses all-to-alls
        # move 1/2 of their payload over 2 ranks; the 2-rank cfg all-gather sends this rank's
        # output row to its one peer, all of it.
        inner = degree // 2
        inner_bytes = sequence_parallel_step_bytes(config, rows // 2, tokens(), BF16_BYTES, inner)
        gather_bytes = cfg_parallel_step_bytes(config, rows // 2, rows // 2, tokens(), BF16_BYTES)
        gangs.append((f"cfg 2 x sequence {inner}", inner_bytes + gather_bytes,
                      inner_bytes * (inner - 1) / inner + gather_bytes, flops / rows / inner))
    costs = []
    for mode, payload, wire, per_rank in gangs:
        costs.append(ParallelModeCost(
            mode=mode, degree=degree, flops_per_rank=per_rank, payload_bytes_per_rank=payload,
            wire_bytes_per_rank=wire, nvlink_seconds=wire / NVLINK_GBPS_PER_DIRECTION,
            compute_seconds_at_peak=per_rank / H100_BF16_PEAK_FLOPS,
            compute_seconds_at_assumed_mfu=per_rank / (H100_BF16_PEAK_FLOPS * ASSUMED_MFU),
        ))
    return flops, costs


def markdown(flops: int, costs: list[ParallelModeCost]) -> str:
    lines = [
        f"A cost MODEL, not a measurement: Wan2.1-14B, {WIDTH}x{HEIGHT}, {FRAMES} frames ({tokens()} tokens), "
        f"CFG (2 rows), bf16, one denoising step: {flops / 1e15:.2f} PFLOP in all; H100 SXM datasheet figures.",
        "",
        "| mode | ranks | PFLOP per rank | collective payload per rank | on the wire per rank "
        "| NVLink time | compute at peak | compute at MFU 0.5 | NVLink / compute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cost in costs:
        lines.append(
            f"| {cost.mode} | {cost.degree} | {cost.flops_per_rank / 1e15:.2f} | "
            f"{cost.payload_bytes_per_rank / 1e9:.1f} GB | {cost.wire_bytes_per_rank / 1e9:.1f} GB | "
            f"{cost.nvlink_seconds:.3f} s | {cost.compute_seconds_at_peak:.2f} s | "
            f"{cost.compute_seconds_at_assumed_mfu:.2f} s | {cost.communication_share:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--json", help="also write the figures here")
    options = parser.parse_args()
    flops, costs = mode_costs(options.degree)
    print(markdown(flops, costs))
    if options.json:
        with open(options.json, "w") as output:
            json.dump({"flops_per_step": flops, "modes": [asdict(cost) for cost in costs]}, output, indent=2)


if __name__ == "__main__":
    main()
