"""The ``videoserve generate`` command, run as a user runs it (the installed script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from typer.testing import CliRunner

from engine.request_validation import validate_generation
from cli.main import app
from tests.support.repo import REPO_ROOT
from tests.support.images import image_bytes

VIDEOSERVE = str(Path(sys.executable).parent / "videoserve")


def _videoserve(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VIDEOSERVE, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "VIDEOSERVE_CACHE_DIR": str(cache), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_mp4_with_progress(preset_cache, tmp_path):
    output = tmp_path / "out.mp4"
    result = _videoserve(
        "generate", "--prompt", "a red car at night", "--seed", "3", "--steps", "3", "--size", "48x32",
        "--frames", "9", "--fps", "12", "-o", str(output), cache=preset_cache,
    )
    assert result.returncode == 0, result.stderr
    assert f"Saved {output}" in result.stdout and "seed 3" in result.stdout
    assert "step 3/3" in result.stderr and "it/s" in result.stderr and "ETA" in result.stderr
    # No --model: the shipped toy model, which says the prompt is outside its grammar (and still generates).
    assert "Loaded toy" in result.stderr and "only knows its grammar" in " ".join(result.stderr.split())
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 48, 32)
        assert stream.average_rate == 12
        assert sum(1 for _ in container.decode(video=0)) == 9


def test_generate_npy_equals_the_in_process_pipeline(preset_cache, tiny_pipeline, tmp_path):
    output = tmp_path / "frames.npy"
    args = {"prompt": "a bird flies over the sea", "seed": 17, "num_inference_steps": 2, "guidance_scale": 4.0}
    result = _videoserve(
        "generate", "--model", "tiny", "--prompt", args["prompt"], "--seed", "17", "--steps", "2", "--guidance", "4.0",
        "-o", str(output), cache=preset_cache,
    )
    assert result.returncode == 0, result.stderr
    expected = tiny_pipeline.generate(validate_generation(args, tiny_pipeline.spec)).frames
    np.testing.assert_array_equal(np.load(output), expected)


def test_generate_image_to_video(preset_cache, tmp_path):
    image = tmp_path / "first.png"
    image.write_bytes(image_bytes(40, 40))
    output = tmp_path / "i2v.npy"
    result = _videoserve(
        "generate", "--model", "tiny-i2v", "--prompt", "a cat", "--image", str(image), "--frames", "5",
        "--steps", "2", "-o", str(output), cache=preset_cache,
    )
    assert result.returncode == 0, result.stderr
    frames = np.load(output)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8


# (model, task, size, frames, steps, guidance, guidance_2): every family and task, non-square, below 128.
EVERY_FAMILY_AND_TASK = [
    ("tiny", "t2v", "48x32", 9, 4, 5.0, None),
    ("tiny-i2v", "i2v", "32x48", 5, 3, 4.0, None),
    ("tiny-wan22-moe", "t2v", "48x32", 9, 6, 4.0, 2.5),
    ("tiny-wan22-moe-i2v", "i2v", "64x32", 5, 6, 3.5, 2.0),
    ("tiny-wan22-ti2v", "t2v", "96x64", 9, 4, 5.0, None),
    ("tiny-wan22-ti2v", "i2v", "64x96", 5, 3, 5.0, None),
    ("tiny-ltx", "t2v", "96x64", 9, 4, 3.0, None),
    ("tiny-ltx", "i2v", "64x32", 5, 3, 3.0, None),
]


@pytest.mark.parametrize("model,task,size,frames,steps,guidance,guidance_2", EVERY_FAMILY_AND_TASK)
def test_generate_lossless_frames_equal_diffusers(preset_specs, tmp_path, model, task, size, frames, steps, guidance,
                                                  guidance_2):
    from engine.models.model_spec import Task
    from tests.support.diffusers_reference import diffusers_pipeline, reference

    spec = preset_specs[model]
    image = tmp_path / "first.png"
    image.write_bytes(image_bytes(56, 40, seed=3))
    output = tmp_path / "frames.npy"
    args = ["generate", "--model", model, "--prompt", "a red car at night", "--negative-prompt", "blurry",
            "--seed", "21", "--steps", str(steps), "--guidance", str(guidance), "--size", size, "--frames", str(frames),
            "-o", str(output)]
    if guidance_2 is not None:
        args += ["--guidance-2", str(guidance_2)]
    if task == "i2v":
        args += ["--image", str(image)]
    result = CliRunner().invoke(app, args, env={"VIDEOSERVE_CACHE_DIR": str(preset_specs.cache), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    width, height = (int(side) for side in size.split("x"))
    raw = {"prompt": "a red car at night", "negative_prompt": "blurry", "seed": 21, "num_inference_steps": steps,
           "guidance_scale": guidance, "width": width, "height": height, "num_frames": frames}
    if guidance_2 is not None:
        raw["guidance_scale_2"] = guidance_2
    if task == "i2v":
        raw["image"] = image.read_bytes()
    request = validate_generation(raw, spec)
    _, expected = reference(spec, diffusers_pipeline(spec, Task(task)), request)
    frames_written = np.load(output)
    assert frames_written.shape == expected.shape == (frames, height, width, 3)
    assert np.abs(frames_written.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "model,args,message",
    [
        ("tiny", ["--guidance-2", "3"], "guidance_scale_2: is not accepted: tiny has one expert"),
        ("tiny-wan22-ti2v", ["--size", "48x32"], "width: must be a multiple of 32"),
        ("tiny-ltx", ["--frames", "7"], "num_frames: must be 4k+1"),
        ("tiny-ltx", ["--shift", "3"], "flow_shift: is not accepted"),
        ("tiny-wan22-moe-i2v", [], "image: is required"),
    ],
)
def test_model_specific_bad_input_exits_2_naming_the_field(preset_specs, tmp_path, model, args, message):
    result = CliRunner().invoke(
        app, ["generate", "--model", model, "--prompt", "a cat", "-o", str(tmp_path / "x.mp4"), *args],
        env={"VIDEOSERVE_CACHE_DIR": str(preset_specs.cache), "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--size", "40x32"], "width: must be a multiple of 16"),
        (["--frames", "6"], "num_frames: must be 4k+1"),
        (["--steps", "0"], "num_inference_steps: must be between 1 and 100"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--model", "no-such-model"], "neither a preset"),
        (["--model", "tiny", "--image", "{png}"], "image: is not accepted"),
        (["--image", "pyproject.toml"], "image: is not a decodable image"),
        (["--image", "missing.png"], "No such file"),
        (["-o", "video.gif"], "must end in .mp4 or .npy"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(preset_cache, tmp_path, args, message):
    png = tmp_path / "first.png"
    png.write_bytes(image_bytes(32, 32))
    args = [arg.format(png=png) for arg in args]
    # In-process through typer's runner: the same command, without a fresh interpreter per case.
    result = CliRunner().invoke(
        app,
        ["generate", "--prompt", "a cat", "-o", str(tmp_path / "x.mp4"), *args],
        env={"VIDEOSERVE_CACHE_DIR": str(preset_cache), "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x.mp4").exists()


def test_models_lists_every_preset(preset_cache):
    result = _videoserve("models", cache=preset_cache)
    assert result.returncode == 0
    for name in ("toy", "tiny", "tiny-i2v", "bench", "tiny-wan22-moe", "tiny-wan22-moe-i2v", "tiny-wan22-ti2v", "tiny-ltx",
                 "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p",
                 "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "ltx-video", "ltx-video-0.9.5"):
        assert name in result.stdout.split()
