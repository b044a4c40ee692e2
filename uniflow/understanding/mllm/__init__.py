"""MLLM probe: a connector and a causal language model on frozen vision tokens (LLaVA-1.5's recipe)."""

from uniflow.understanding.mllm.connector import Connector
from uniflow.understanding.mllm.conversation import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN_INDEX,
    PLAIN,
    TEMPLATES,
    VICUNA_V1,
    ChatTemplate,
    ConversationError,
    EncodedConversation,
    PlainTemplate,
    SeparatorTemplate,
    TemplateMismatchError,
    encode_conversation,
    get_template,
    parse_llava_conversations,
)
from uniflow.understanding.mllm.generate import generate_answers, greedy_generate
from uniflow.understanding.mllm.model import TRAINABLE, LoraSettings, MLLMProbe, collate_mllm, load_causal_lm
from uniflow.understanding.mllm.smollm2 import find_smollm2_gguf, load_smollm2, load_smollm2_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN_INDEX",
    "PLAIN",
    "TEMPLATES",
    "TRAINABLE",
    "VICUNA_V1",
    "ChatTemplate",
    "Connector",
    "ConversationError",
    "EncodedConversation",
    "LoraSettings",
    "MLLMProbe",
    "PlainTemplate",
    "SeparatorTemplate",
    "TemplateMismatchError",
    "collate_mllm",
    "encode_conversation",
    "find_smollm2_gguf",
    "generate_answers",
    "get_template",
    "greedy_generate",
    "load_causal_lm",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "parse_llava_conversations",
]
