"""The model zoo: seed model types with the original checkpoints' shapes, plus tiny test types; and the models of
user catalogs, from their config.json (user.py)."""

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
from .user import model_of

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
    "model_of",
    "models_summary",
]
