"""Offline LLM presets for the prompt-expansion stage: a real transformers class, random weights.

Like the Wan presets in ``engine/models/builtin_presets.py``, ``tiny-llm`` cannot be downloaded
here, so it is built on first use from the same class as Qwen2.5-Instruct
(``Qwen2ForCausalLM``) with a tiny config and seeded random weights, plus a byte-level
BPE tokenizer built in memory with a ChatML chat template. Both are written with
``save_pretrained`` and from then on loaded through ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained`` exactly like a real instruct checkpoint.

Weights are a pure function of (architecture, seed, torch version) and the vocabulary is
built from constants, so two machines build byte-identical presets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.models.builtin_presets import PRESET_METADATA_FILE
from engine.models.preset_cache import build_once

# Bump when the construction below changes, so caches built by older code are not reused.
LLM_BUILDER_VERSION = 1

# Qwen2.5's special tokens and ids 0..2 for them; the byte alphabet follows.
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# The ChatML template Qwen2.5-Instruct uses, minus its tool-calling branches.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Whole-word merges for these make random generations read as (meaningless) prompt words
# rather than byte soup; any other text still round-trips through the byte alphabet.
_VOCABULARY_WORDS = (
    "a an the of in on and with at to from through over under into as is are while "
    "cat dog bird fish horse robot man woman child car train boat city street forest river "
    "sea ocean mountain sky sun moon star rain snow fire water tree house road beach desert "
    "walks runs flies swims drives jumps turns looks smiles waves falls rises glows moves "
    "slow fast gentle smooth steady dramatic soft warm cold bright dark golden blue red green "
    "camera pan tilt zoom dolly tracking shot close wide aerial view angle handheld orbit "
    "light lighting shadow sunset sunrise night morning fog mist haze neon reflections "
    "motion background foreground detail texture cinematic realistic scene frame video "
    "expand prompt subject describe paragraph one rich vivid"
).split()


@dataclass(frozen=True)
class RandomLlmArchitecture:
    """Sizes of a random-weight Qwen2 causal LM."""

    seed: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int
    # Wider than Qwen's 0.02 so that logits depend visibly on the input: with 0.02 a
    # model this small emits the same token whatever it is given.
    initializer_range: float


@dataclass(frozen=True)
class BuiltinLlmPreset:
    name: str
    description: str
    architecture: RandomLlmArchitecture


BUILTIN_LLM_PRESETS: dict[str, BuiltinLlmPreset] = {
    "tiny-llm": BuiltinLlmPreset(
        name="tiny-llm",
        description="random-weight Qwen2 instruct LLM for prompt-expansion tests and the offline demo",
        architecture=RandomLlmArchitecture(
            seed=20250201,
            hidden_size=64,
            num_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=4096,
            initializer_range=0.2,
        ),
    ),
}


def builtin_llm_dir(name: str, cache_dir: Path) -> Path:
    """Return the preset's transformers-format directory, building it on first use."""
    if name not in BUILTIN_LLM_PRESETS:
        raise KeyError(f"unknown built-in LLM preset {name!r}; known: {', '.join(BUILTIN_LLM_PRESETS)}")
    target = Path(cache_dir) / "presets" / f"{name}-v{LLM_BUILDER_VERSION}"
    return build_once(target, lambda directory: save_random_llm(BUILTIN_LLM_PRESETS[name], directory),
                      PRESET_METADATA_FILE)


def save_random_llm(preset: BuiltinLlmPreset, directory: Path) -> None:
    """Construct the tokenizer and a seeded random model, and save_pretrained both."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    arch = preset.architecture
    tokenizer = build_chat_tokenizer()
    pad_id, eos_id = tokenizer.convert_tokens_to_ids([PAD_TOKEN, IM_END_TOKEN])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        initializer_range=arch.initializer_range,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(arch.seed)
    model = Qwen2ForCausalLM(config)
    # Qwen2.5-Instruct stops on either <|im_end|> or <|endoftext|>; mirror that so a
    # caller relying on the checkpoint's own stop tokens sees the same behaviour.
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=[eos_id, pad_id])
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    metadata = {
        "name": preset.name,
        "description": preset.description,
        "builder_version": LLM_BUILDER_VERSION,
        "architecture": asdict(arch),
    }
    (Path(directory) / PRESET_METADATA_FILE).write_text(json.dumps(metadata, indent=2))


def build_chat_tokenizer():
    """A byte-level BPE tokenizer (as Qwen2's) with ChatML specials and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    vocab: dict[str, int] = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[byte_symbols[byte]] = len(vocab)
    merges: list[tuple[str, str]] = []
    space = byte_symbols[ord(" ")]
    for word in _VOCABULARY_WORDS:
        # Grow each word left to right, one merge per character, so every prefix is a
        # token and BPE reassembles the whole word.
        symbols = [space, *(byte_symbols[byte] for byte in word.encode())]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END_TOKEN, pad_token=PAD_TOKEN)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
