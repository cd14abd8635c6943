"""engine/ stays free of Ray and FastAPI; stage boundaries are frozen, picklable values."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
import torch

from engine.models.model_spec import ModelSpec
from engine.request_validation import validate_generation
from tests.support.repo import REPO_ROOT, run_python
from tests.support.images import image_bytes

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
    from engine.stage_types import TextRequest
    from engine.stages.text_encoder import TextEncoder

    return TextEncoder(spec).encode(TextRequest.of(request))


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


# What each top-level package may import of ours: engine is the base, serve builds on it,
# deploy renders serve's config, the CLI and the benchmarks sit on top; training builds models
# from engine's pieces and nothing imports it.
ALLOWED_ARROWS = {
    "engine": set(),
    "training": {"engine"},
    "serve": {"engine"},
    "deploy": {"engine", "serve"},
    "cli": {"engine", "serve", "deploy"},
    "benchmarks": {"engine", "serve", "deploy"},
}


def _module_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports, at top level or inside functions alike
    (a lazy import hides a cycle from the interpreter, not from the design)."""
    paths = {}
    for package in ALLOWED_ARROWS:
        for path in (REPO_ROOT / package).rglob("*.py"):
            paths[".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    graph = {}
    for module, path in paths.items():
        imported = set()
        tree = ast.parse(path.read_text(), str(path))
        # Imports under ``if TYPE_CHECKING:`` never run: annotations may point anywhere.
        type_only = {id(inner) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
                     for statement in node.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for name in candidates:
                while name and name not in paths:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    imported.add(name)
                    break
        graph[module] = imported
    return graph


def test_no_package_imports_one_above_it():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _module_imports().items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED_ARROWS[module.split(".")[0]]
    )
    assert upward == []


def test_there_are_no_import_cycles():
    graph = _module_imports()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(module):  # Tarjan's strongly connected components
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []
