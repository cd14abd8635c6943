"""Prompt expansion: the tiny-llm preset, chat templating, batched greedy generation, config errors.

The preset's weights are random, so expansions are word salad; these tests check the
mechanics (templating, padding, batching, determinism, bounds), not the prose.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from engine.models.builtin_llm_presets import (
    BUILTIN_LLM_PRESETS,
    CHATML_TEMPLATE,
    IM_END_TOKEN,
    LLM_BUILDER_VERSION,
    PAD_TOKEN,
    build_chat_tokenizer,
    builtin_llm_dir,
)
from engine.models.model_registry import ModelNotFoundError
from engine.stages.prompt_expander import DEFAULT_SYSTEM_PROMPT, PromptExpander, PromptExpanderConfig
from tests.support.repo import run_python

PROMPTS = ["a cat", "a red car drives through a city street at night in the rain", "dog on a beach"]


def _tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tiny_llm_dir(preset_cache) -> Path:
    return builtin_llm_dir("tiny-llm", preset_cache)


@pytest.fixture(scope="module")
def expander(preset_cache, tiny_llm_dir) -> PromptExpander:
    return PromptExpander(PromptExpanderConfig(model="tiny-llm"), preset_cache)


@pytest.fixture(scope="module")
def batched_expansion(expander) -> list[str]:
    return expander.expand(PROMPTS)


def test_tiny_llm_preset_is_deterministic_across_processes(tmp_path):
    # Two fresh interpreters stand in for two machines.
    digests = []
    for name in ("a", "b"):
        code = (
            "from engine.models.builtin_llm_presets import builtin_llm_dir; "
            f"print(builtin_llm_dir('tiny-llm', '{tmp_path / name}'))"
        )
        result = run_python(code)
        assert result.returncode == 0, result.stderr
        digests.append(_tree_digest(Path(result.stdout.strip().splitlines()[-1])))
    assert digests[0] == digests[1]
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(digests[0])


def test_tiny_llm_preset_loads_like_a_real_instruct_checkpoint(tiny_llm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    assert tiny_llm_dir.name == f"tiny-llm-v{LLM_BUILDER_VERSION}"
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    arch = BUILTIN_LLM_PRESETS["tiny-llm"].architecture
    assert model.config.hidden_size == arch.hidden_size
    assert model.config.num_hidden_layers == arch.num_layers
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token == IM_END_TOKEN
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, tokenizer.pad_token_id]
    # Byte-level BPE is lossless: any text, including emoji, round-trips.
    text = "a slow camera pan over a neon street ✨ 東京"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # Vocabulary words are single tokens, as in a real tokenizer.
    assert tokenizer.convert_ids_to_tokens(tokenizer(" camera")["input_ids"]) == ["Ġcamera"]


def test_tiny_llm_preset_is_built_once(preset_cache, tiny_llm_dir):
    weights = tiny_llm_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert builtin_llm_dir("tiny-llm", preset_cache) == tiny_llm_dir
    assert weights.stat().st_mtime_ns == stamp


def test_chat_template_wraps_system_and_user_prompt(expander):
    templated = expander.templated_prompt("a cat chases a laser dot")
    assert templated == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\na cat chases a laser dot<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The tokens the model is actually given decode back to exactly that text.
    inputs = expander.encode_batch(["a cat chases a laser dot"])
    seen = expander._tokenizer.decode(inputs["input_ids"][0])
    assert seen == templated


def test_empty_system_prompt_sends_only_the_user_turn(preset_cache, tiny_llm_dir):
    bare = PromptExpander(PromptExpanderConfig(model=str(tiny_llm_dir), system_prompt=""), preset_cache)
    assert bare.templated_prompt("a dog") == "<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n"


def test_batch_is_left_padded(expander):
    inputs = expander.encode_batch(PROMPTS)
    mask = inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    assert len(set(lengths)) == 3
    assert mask[:, -1].tolist() == [1, 1, 1]
    shortest = lengths.index(min(lengths))
    assert mask[shortest, 0].item() == 0
    pad_id = expander._tokenizer.pad_token_id
    assert (inputs["input_ids"][mask == 0] == pad_id).all()


def test_batched_expansion_equals_expanding_each_alone(expander, batched_expansion):
    batched = batched_expansion
    alone = [expander.expand([prompt])[0] for prompt in PROMPTS]
    assert batched == alone
    # Distinct inputs give distinct outputs, so equality above is not vacuous.
    assert len(set(batched)) == 3
    assert all(text and text != prompt for text, prompt in zip(batched, PROMPTS))


def test_expansion_is_deterministic_across_instances(preset_cache, batched_expansion):
    again = PromptExpander(PromptExpanderConfig(model="tiny-llm"), preset_cache)
    assert again.expand(PROMPTS) == batched_expansion


def test_expand_decodes_only_the_new_tokens(expander, batched_expansion):
    token_ids = expander.generate_token_ids(PROMPTS)
    decoded = [expander._tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]
    assert batched_expansion == decoded
    assert all("<|im_start|>" not in text and DEFAULT_SYSTEM_PROMPT not in text for text in decoded)


def test_max_new_tokens_bounds_the_output(preset_cache, expander):
    short = PromptExpander(PromptExpanderConfig(model="tiny-llm", max_new_tokens=5), preset_cache)
    short_ids = short.generate_token_ids(PROMPTS)
    long_ids = expander.generate_token_ids(PROMPTS)
    assert [len(ids) for ids in short_ids] == [5, 5, 5]
    assert all(5 < len(ids) <= 64 for ids in long_ids)
    # Greedy: the short run is exactly the start of the long one.
    assert short_ids == [ids[:5] for ids in long_ids]


def test_empty_prompt_list_returns_empty(expander):
    assert expander.expand([]) == []


def test_non_string_prompt_is_refused(expander):
    with pytest.raises(TypeError, match=r"prompts\[1\]: must be a string"):
        expander.expand(["a cat", 7])


def test_empty_expansion_falls_back_to_the_original_prompt(
    preset_cache, tiny_llm_dir, expander, batched_expansion, tmp_path
):
    # A copy of the checkpoint whose stop tokens include the token greedy decoding picks
    # first for this prompt, so the model's reply is empty.
    first_token = expander.generate_token_ids(["a cat"])[0][0]
    stopping = tmp_path / "stops-at-once"
    shutil.copytree(tiny_llm_dir, stopping)
    generation_config = json.loads((stopping / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [*generation_config["eos_token_id"], first_token]
    (stopping / "generation_config.json").write_text(json.dumps(generation_config))
    stopper = PromptExpander(PromptExpanderConfig(model=str(stopping)), preset_cache)
    assert stopper.generate_token_ids(["a cat"]) == [[]]
    assert stopper.expand(["a cat", "dog on a beach"]) == ["a cat", batched_expansion[2]]


def test_llama_checkpoint_without_pad_token_is_accepted(preset_cache, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_chat_tokenizer()
    tokenizer.pad_token = None  # Llama checkpoints ship without one
    directory = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            initializer_range=0.2,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    llama = PromptExpander(PromptExpanderConfig(model=str(directory), max_new_tokens=12), preset_cache)
    batched = llama.expand(PROMPTS)
    assert batched == [llama.expand([prompt])[0] for prompt in PROMPTS]
    assert len(set(batched)) == 3


def test_checkpoint_without_chat_template_is_refused(preset_cache, tiny_llm_dir, tmp_path):
    plain = tmp_path / "base-model"
    shutil.copytree(tiny_llm_dir, plain)
    (plain / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="has no chat template"):
        PromptExpander(PromptExpanderConfig(model=str(plain)), preset_cache)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"max_new_tokens": 0}, r"max_new_tokens: must be a positive integer \(got 0\)"),
        ({"max_new_tokens": -3}, r"max_new_tokens: must be a positive integer \(got -3\)"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens: must be a positive integer \(got 2.5\)"),
        ({"max_new_tokens": True}, r"max_new_tokens: must be a positive integer \(got True\)"),
        ({"model": ""}, r"model: must name an LLM preset"),
        ({"dtype": "float64"}, r"dtype must be one of .* \(got 'float64'\)"),
    ],
)
def test_bad_config_values_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        PromptExpanderConfig(**{"model": "tiny-llm", **overrides})


@pytest.mark.parametrize("model", ["no-such-llm", "/nonexistent/llm-dir", "./missing"])
def test_unknown_model_that_is_not_a_directory_is_refused(preset_cache, model):
    with pytest.raises(ModelNotFoundError, match=rf"model: '{model}' is neither a built-in LLM preset \(tiny-llm\)"):
        PromptExpander(PromptExpanderConfig(model=model), preset_cache)


def test_hub_repo_missing_offline_is_a_clear_error(tmp_path):
    code = (
        "from engine.stages.prompt_expander import PromptExpander, PromptExpanderConfig\n"
        "from engine.models.model_registry import ModelNotFoundError\n"
        "try:\n"
        f"    PromptExpander(PromptExpanderConfig(model='nobody/no-such-llm'), '{tmp_path}')\n"
        "except ModelNotFoundError as error:\n"
        "    print('refused:', error)\n"
    )
    result = run_python(code, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert "refused: model: 'nobody/no-such-llm' could not be loaded" in result.stdout
