"""Cut a Hugging Face causal LM into client Bottom / server Trunk / client Top, with LoRA per part."""

from splitfed.models.checkpoint import CheckpointError, load_client_parts, load_part
from splitfed.models.fingerprint import model_fingerprint
from splitfed.models.kv import KVCache, stack_caches, unstack_cache
from splitfed.models.layout import Layout, UnsupportedModelError, detect_layout, validate_cut
from splitfed.models.local import SUPPORTED_MODEL_TYPES, ModelDirError, ModelInfo, inspect_model_dir
from splitfed.models.lora import (
    LoraSpec,
    PartAdapter,
    SplitLoraConfig,
    adapted_modules,
    adapter_parameters,
    add_lora,
    export_adapter,
    get_adapter_state,
    peft_config_for,
    set_adapter_state,
    set_lora,
    with_adapter_name,
)
from splitfed.models.parts import Bottom, SplitPart, Top, TopOutput, Trunk, position_ids_from_mask
from splitfed.models.pretrained import (
    MODELS,
    ByteTokenizer,
    ModelPackageMissing,
    Pretrained,
    load_pretrained,
    load_tokenizer,
    prepare,
)
from splitfed.models.split import SplitMismatchError, SplitModel, split_model, verify_split

__all__ = [
    "Bottom",
    "ByteTokenizer",
    "CheckpointError",
    "KVCache",
    "Layout",
    "LoraSpec",
    "MODELS",
    "ModelDirError",
    "ModelInfo",
    "ModelPackageMissing",
    "PartAdapter",
    "Pretrained",
    "SplitLoraConfig",
    "SplitMismatchError",
    "SplitModel",
    "SplitPart",
    "SUPPORTED_MODEL_TYPES",
    "Top",
    "TopOutput",
    "Trunk",
    "UnsupportedModelError",
    "adapted_modules",
    "adapter_parameters",
    "add_lora",
    "apply_lora",
    "detect_layout",
    "export_adapter",
    "get_adapter_state",
    "inspect_model_dir",
    "load_client_parts",
    "load_part",
    "load_pretrained",
    "load_tokenizer",
    "model_fingerprint",
    "peft_config_for",
    "position_ids_from_mask",
    "prepare",
    "set_adapter_state",
    "set_lora",
    "split_model",
    "stack_caches",
    "unstack_cache",
    "validate_cut",
    "verify_split",
    "with_adapter_name",
]


def apply_lora(split: SplitModel, config: SplitLoraConfig, *, seed: int = 0) -> dict[str, list[str]]:
    """Add each part's LoRA adapter (`config.bottom/trunk/top`); returns adapted module names per part."""
    parts = split.parts.items()
    return {role: set_lora(part, config.for_role(role), seed=seed + i) for i, (role, part) in enumerate(parts)}
