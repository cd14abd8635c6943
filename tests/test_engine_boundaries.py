"""engine/ stays free of Ray and FastAPI; stage boundaries are frozen, picklable values."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
import torch

from engine.model_spec import ModelSpec
from engine.request_validation import validate_generation
from tests.conftest import REPO_ROOT, image_bytes, run_python

FORBIDDEN = ("ray", "fastapi", "starlette")


def test_engine_source_never_imports_ray_or_fastapi():
    offenders = []
    for path in (REPO_ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_every_engine_module_loads_no_ray_or_fastapi():
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO_ROOT / "engine").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_boundary_dataclasses_are_frozen_and_picklable(tiny_i2v_pipeline):
    request = validate_generation(
        {"prompt": "a dog", "seed": 3, "num_inference_steps": 2, "image": image_bytes(32, 32)},
        tiny_i2v_pipeline.spec,
    )
    task = tiny_i2v_pipeline.denoise_task(request)
    latents = tiny_i2v_pipeline.denoiser.denoise(task)
    frames = tiny_i2v_pipeline.vae_decoder.decode(latents, fps=request.fps)
    for value in (request, task, task.text, task.image, latents, frames):
        assert dataclasses.is_dataclass(value)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, None)
        copy = pickle.loads(pickle.dumps(value))
        for field in dataclasses.fields(value):
            original, restored = getattr(value, field.name), getattr(copy, field.name)
            if isinstance(original, torch.Tensor):
                assert torch.equal(original, restored)
    for value in (task, task.text, task.image, latents):
        # No model objects cross a boundary: only tensors, arrays and plain values.
        for field in dataclasses.fields(value):
            assert not isinstance(getattr(value, field.name), torch.nn.Module)


def _encode_in_another_process(spec: ModelSpec, request):
    from engine.stages.text_encoder import TextEncoder

    return TextEncoder(spec).encode(request)


def test_a_stage_can_live_in_its_own_process(tiny_pipeline):
    request = validate_generation({"prompt": "a bird over the sea", "seed": 11, "num_frames": 5}, tiny_pipeline.spec)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        remote_text = pool.submit(_encode_in_another_process, tiny_pipeline.spec, request).result(timeout=300)
    local_task = tiny_pipeline.denoise_task(request)
    torch.testing.assert_close(remote_text.prompt_embeds, local_task.text.prompt_embeds, rtol=0, atol=0)
    remote_task = dataclasses.replace(local_task, text=remote_text)
    local = tiny_pipeline.denoiser.denoise(local_task).latents
    remote = tiny_pipeline.denoiser.denoise(remote_task).latents
    assert torch.equal(local, remote)
