"""The model zoo: seed model types with the original checkpoints' shapes, plus tiny test types."""

from .chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
from .qwen import QWenConfig, QWenLMHeadModel
from .registry import (
    MODELS,
    SEED_MODEL_TYPES,
    ModelEntry,
    UnknownModelType,
    build_model,
    count_lora_trainable,
    count_parameters,
    enable_activation_checkpointing,
    get_model,
    lora_target_modules,
    models_summary,
)

__all__ = [
    "MODELS",
    "SEED_MODEL_TYPES",
    "ChatGLMConfig",
    "ChatGLMForConditionalGeneration",
    "ModelEntry",
    "QWenConfig",
    "QWenLMHeadModel",
    "UnknownModelType",
    "build_model",
    "count_lora_trainable",
    "count_parameters",
    "enable_activation_checkpointing",
    "get_model",
    "lora_target_modules",
    "models_summary",
]
