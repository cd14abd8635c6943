"""Prompt-expansion stage: a user's short video prompt -> a richer one, from an instruct LLM.

Wan follows detailed prompts (subject, motion, camera, lighting) far better than terse
ones, so an optional LLM rewrites the prompt before the text encoder sees it. Several
prompts share one ``generate`` call; decoding is greedy so the same prompt always
expands to the same text (and so to the same video for the same seed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models.builtin_llm_presets import BUILTIN_LLM_PRESETS, builtin_llm_dir
from engine.models.model_registry import ModelNotFoundError
from engine.stage_placement import StagePlacement

DEFAULT_SYSTEM_PROMPT = (
    "You expand short prompts for a text-to-video model. Rewrite the user's prompt as one "
    "vivid paragraph of at most 80 words that keeps its subject and meaning and adds concrete "
    "detail: what the subject looks like, how it moves, the camera (shot size, angle, "
    "movement), the lighting and the setting. Describe only what is visible. Reply with the "
    "paragraph alone, with no preamble, title, list or quotes."
)

# "owner/name" as the Hugging Face hub spells repo ids; anything else that is neither a
# preset nor a directory is a typo, and should fail here rather than as a 404 later.
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PromptExpanderConfig:
    model: str  # a built-in LLM preset ("tiny-llm"), a local directory, or a hub repo id
    max_new_tokens: int = 64
    # An empty system prompt sends the user's message alone, for chat templates that
    # have no system role.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model: must name an LLM preset, directory or hub repo id (got {self.model!r})")
        max_new_tokens = self.max_new_tokens
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: must be a positive integer (got {self.max_new_tokens!r})")
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt: must be a string (got {type(self.system_prompt).__name__})")
        StagePlacement(device=self.device, dtype=self.dtype)  # raises naming dtype if unknown


def resolve_llm_source(model: str, cache_dir: Path) -> str:
    """A local directory or hub repo id for ``from_pretrained``; built-ins are built here."""
    if model in BUILTIN_LLM_PRESETS:
        return str(builtin_llm_dir(model, cache_dir))
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _HUB_REPO_ID.match(model) and not path.exists():
        return model
    raise ModelNotFoundError(
        f"model: {model!r} is neither a built-in LLM preset ({', '.join(BUILTIN_LLM_PRESETS)}), "
        "a local directory, nor a Hugging Face repo id (owner/name)"
    )


class PromptExpander:
    def __init__(self, config: PromptExpanderConfig, cache_dir: Path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.placement = StagePlacement(device=config.device, dtype=config.dtype)
        source = resolve_llm_source(config.model, cache_dir)
        try:
            # Left padding keeps every prompt's last token at the end of the batch, where
            # generation continues from; right padding would make short prompts continue
            # from pad tokens.
            tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(source, dtype=self.placement.torch_dtype)
        except OSError as error:  # huggingface_hub raises OSError subclasses when offline or missing
            raise ModelNotFoundError(f"model: {config.model!r} could not be loaded: {error}") from error
        if not tokenizer.chat_template:
            raise ValueError(
                f"model: {config.model!r} has no chat template; prompt expansion needs an instruction-tuned model"
            )
        if tokenizer.pad_token is None:
            # Llama-style checkpoints ship without a pad token; padded positions are
            # masked out, so which id fills them does not matter.
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer
        self._model = model.to(self.placement.device).eval()
        stop_ids = model.generation_config.eos_token_id
        if stop_ids is None:
            stop_ids = tokenizer.eos_token_id
        self._stop_ids = frozenset([stop_ids] if isinstance(stop_ids, int) else stop_ids)

    def templated_prompt(self, prompt: str) -> str:
        """The exact text the model is given for ``prompt``: system + user turns, ready for the reply."""
        messages = [{"role": "user", "content": prompt}]
        if self.config.system_prompt:
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded input ids and attention mask for one generate call."""
        _check_prompts(prompts)
        # The chat template already holds any BOS/special tokens the model expects;
        # letting the tokenizer add its own would double them.
        encoded = self._tokenizer(
            [self.templated_prompt(prompt) for prompt in prompts],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
        return {name: tensor.to(self.placement.device) for name, tensor in encoded.items()}

    @torch.inference_mode()
    def generate_token_ids(self, prompts: list[str]) -> list[list[int]]:
        """The new tokens generated for each prompt, up to (not including) its stop token."""
        _check_prompts(prompts)
        if not prompts:
            return []
        from transformers import GenerationConfig

        inputs = self.encode_batch(prompts)
        # A fresh config rather than the checkpoint's: instruct checkpoints ship sampling
        # settings (temperature, top_p, repetition penalty) and expansion must be greedy.
        generation_config = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(self._stop_ids),
            pad_token_id=self._tokenizer.pad_token_id,
        )
        output = self._model.generate(**inputs, generation_config=generation_config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._until_stop(tokens) for tokens in new_tokens]

    def expand(self, prompts: list[str]) -> list[str]:
        """One expanded prompt per input, in order; an empty expansion keeps the original."""
        token_ids = self.generate_token_ids(prompts)
        if not token_ids:
            return []  # batch_decode([]) would decode one empty sequence, not none
        texts = self._tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return [text.strip() or prompt for text, prompt in zip(texts, prompts, strict=True)]

    def _until_stop(self, tokens: list[int]) -> list[int]:
        for index, token in enumerate(tokens):
            if token in self._stop_ids:
                return tokens[:index]
        return tokens


def _check_prompts(prompts: list[str]) -> None:
    if not isinstance(prompts, list):
        raise TypeError(f"prompts: must be a list of strings (got {type(prompts).__name__})")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{index}]: must be a string (got {type(prompt).__name__})")
