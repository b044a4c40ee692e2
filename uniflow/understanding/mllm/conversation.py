"""Prompt templates and label masking for the MLLM probe.

A conversation is a list of ``{"role": "system" | "user" | "assistant", "content": str}`` messages; the
user message that shows the image holds an ``<image>`` placeholder. A template cuts the conversation
into pieces (system, user, assistant header, assistant answer, image) and also renders it as one prompt
string. Every piece is tokenized on its own and the token lists are concatenated, so which tokens are
supervised is known by construction: no token offsets are computed. LLaVA's ``preprocess_v1``
instead tokenizes whole rounds and subtracts assumed token counts for the template's parts; when the
language model (its tokenizer) changes, the counts go wrong, it warns "tokenization mismatch" and
masks every label of the sample (loss 0).

Two checks guard each sample: the training sequence keeps at least one supervised token, and the
pieces, concatenated and decoded, give back exactly the prompt the template renders in one go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The label PyTorch's cross entropy (and Hugging Face's causal LM loss) ignores.
IGNORE_INDEX = -100
# The placeholder LLaVA puts in the text where the image goes ("<image>").
IMAGE_PLACEHOLDER = "<image>"
# LLaVA's sentinel id for the placeholder: negative, so it can never be a vocabulary id and the
# tokenizer needs no new token; the model swaps it for the image's embeddings.
IMAGE_TOKEN_INDEX = -200

# LLaVA's training JSON names the speakers "human" and "gpt".
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

Message = Mapping[str, str]


class ConversationError(ValueError):
    """A sample whose conversation cannot become a supervised sequence; the message names the sample."""


class TemplateMismatchError(ConversationError):
    """The pieces of a conversation, tokenized one by one, do not give back the template's full prompt."""


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: text tokenized on its own, or the image placeholder."""

    text: str
    supervised: bool = False
    image: bool = False


def split_image(text: str) -> list[Segment]:
    """Unsupervised pieces of ``text``, with every ``<image>`` as a piece of its own."""
    segments: list[Segment] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            segments.append(Segment(IMAGE_PLACEHOLDER, image=True))
        if chunk:
            segments.append(Segment(chunk))
    return segments


class Template(Protocol):
    """What a prompt template gives the encoder."""

    name: str
    # Text that ends an answer when the tokenizer has no end-of-sequence token for it (vicuna_v1's
    # "</s>" is plain text for a tokenizer that does not know it).
    stop_strings: tuple[str, ...]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """The whole prompt as one string."""
        ...

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
        """The same prompt as pieces whose texts concatenate to :meth:`render`."""
        ...


@dataclass(frozen=True)
class SeparatorTemplate:
    """LLaVA's two-separator conversation (``SeparatorStyle.TWO``, the ``vicuna_v1`` template).

    The prompt is ``system + sep``, then per turn ``role: message`` followed by ``sep`` after the user
    and ``sep2`` after the assistant; a prompt for generation ends with ``assistant_role + ":"``. The
    space before an answer goes with the answer, so the tokens a model sees after ``ASSISTANT:`` at
    inference are the ones it was trained to produce. ``bos`` is the tokenizer's beginning-of-sequence
    text when the tokenizer adds one to every encoding (as Llama/Vicuna's does), written out here
    because pieces are tokenized without special tokens.
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    bos: str = ""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.sep2,)

    def _system(self, messages: Sequence[Message]) -> str:
        """The conversation's own system message if it has one, else the template's."""
        return messages[0]["content"] if messages and messages[0]["role"] == "system" else self.system

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        prompt = self.bos + self._system(messages) + self.sep
        for message in _turns(messages):
            if message["role"] == "user":
                prompt += f"{self.roles[0]}: {message['content']}{self.sep}"
            else:
                prompt += f"{self.roles[1]}: {message['content']}{self.sep2}"
        if add_generation_prompt:
            prompt += f"{self.roles[1]}:"
        return prompt

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
        segments = [Segment(self.bos + self._system(messages))]
        # The separator after the system prompt opens the first user piece; later user pieces follow
        # an answer's sep2 directly.
        opening = self.sep
        for message in _turns(messages):
            if message["role"] == "user":
                segments += split_image(f"{opening}{self.roles[0]}: {message['content']}")
                opening = ""
            else:
                segments.append(Segment(f"{self.sep}{self.roles[1]}:"))
                segments.append(Segment(f" {message['content']}{self.sep2}", supervised=True))
        if add_generation_prompt:
            segments.append(Segment(f"{self.sep}{self.roles[1]}:"))
        return segments


@dataclass(frozen=True)
class PlainTemplate:
    """LLaVA's ``plain`` template for stage-1 alignment on captions: the image, then the caption and
    ``sep``. The user's text is dropped (LLaVA's ``preprocess_plain``): the connector learns to make the
    LLM describe the image, nothing else."""

    name: str = "plain"
    sep: str = "\n"
    bos: str = ""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.sep,)

    def _caption(self, messages: Sequence[Message], add_generation_prompt: bool) -> str | None:
        turns = _turns(messages)
        expected = 1 if add_generation_prompt else 2
        if len(turns) != expected or IMAGE_PLACEHOLDER not in turns[0]["content"]:
            raise ConversationError(
                f"the plain template takes one user message with {IMAGE_PLACEHOLDER}"
                f"{'' if add_generation_prompt else ' and one answer'}, got {len(turns)} messages"
            )
        return None if add_generation_prompt else turns[1]["content"]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        caption = self._caption(messages, add_generation_prompt)
        return self.bos + IMAGE_PLACEHOLDER + ("" if caption is None else caption + self.sep)

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
        caption = self._caption(messages, add_generation_prompt)
        segments = [Segment(self.bos)] if self.bos else []
        segments.append(Segment(IMAGE_PLACEHOLDER, image=True))
        if caption is not None:
            segments.append(Segment(caption + self.sep, supervised=True))
        return segments


class ChatTemplate:
    """The language model's own chat template (``tokenizer.apply_chat_template``).

    Pieces come from rendering growing prefixes of the conversation: a message's piece is what its
    rendering adds to the previous one, and an answer's header is what ``add_generation_prompt`` adds.
    A template whose earlier output changes when a message is appended cannot be cut this way; that is
    reported as a :class:`TemplateMismatchError`.
    """

    name = "chat"
    stop_strings: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any, system: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"{type(tokenizer).__name__} has no chat template; use a separator template such as 'vicuna_v1'"
            )
        self.tokenizer = tokenizer
        self.system = system

    def _messages(self, messages: Sequence[Message]) -> list[dict[str, str]]:
        turns = [dict(m) for m in messages]
        if self.system is not None and not (turns and turns[0]["role"] == "system"):
            turns.insert(0, {"role": "system", "content": self.system})
        return turns

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        return self._render(self._messages(messages), add_generation_prompt)

    def segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
        turns = self._messages(messages)
        segments: list[Segment] = []
        rendered = ""
        for k, message in enumerate(turns):
            if message["role"] == "assistant":
                header = _addition(rendered, self._render(turns[:k], add_generation_prompt=True), k)
                segments.append(Segment(header))
                rendered += header
                answer = _addition(rendered, self._render(turns[: k + 1], add_generation_prompt=False), k)
                segments.append(Segment(answer, supervised=True))
                rendered += answer
            else:
                piece = _addition(rendered, self._render(turns[: k + 1], add_generation_prompt=False), k)
                segments += split_image(piece)
                rendered += piece
        if add_generation_prompt:
            segments.append(
                Segment(_addition(rendered, self._render(turns, add_generation_prompt=True), len(turns)))
            )
        return segments


def _addition(prefix: str, rendered: str, index: int) -> str:
    if not rendered.startswith(prefix):
        raise TemplateMismatchError(
            f"the chat template rewrites earlier text when message {index} is added "
            f"({first_difference(prefix, rendered)}), so the prompt cannot be cut into pieces"
        )
    return rendered[len(prefix) :]


def _turns(messages: Sequence[Message]) -> list[Message]:
    """The user/assistant messages, without the system message."""
    return [m for m in messages if m["role"] != "system"]


VICUNA_V1 = SeparatorTemplate(
    name="vicuna_v1",
    system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    roles=("USER", "ASSISTANT"),
    sep=" ",
    sep2="</s>",
)
PLAIN = PlainTemplate()
TEMPLATES = ("chat", "vicuna_v1", "plain")


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether encoding text with special tokens starts with the tokenizer's BOS (Llama's does)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    return bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]


def get_template(name: str, tokenizer: Any, system: str | None = None) -> Template:
    """``chat`` (the tokenizer's own template), ``vicuna_v1`` or ``plain`` (LLaVA's), for ``tokenizer``.

    ``system`` replaces the system prompt (``chat``: added when the conversation has none).
    """
    if name == "chat":
        return ChatTemplate(tokenizer, system)
    bos = tokenizer.bos_token if tokenizer_adds_bos(tokenizer) else ""
    if name == "vicuna_v1":
        return dataclasses.replace(VICUNA_V1, bos=bos, system=VICUNA_V1.system if system is None else system)
    if name == "plain":
        return dataclasses.replace(PLAIN, bos=bos)
    raise ValueError(f"unknown conversation template {name!r}; expected one of {TEMPLATES}")


def parse_llava_conversations(
    conversations: Sequence[Mapping[str, str]], sample_id: str
) -> list[dict[str, str]]:
    """LLaVA's ``[{"from": "human" | "gpt", "value": ...}, ...]`` -> role/content messages.

    As LLaVA's ``preprocess_multimodal`` does, an ``<image>`` anywhere in a message is moved to its
    start, followed by a newline, so every template sees the image before the question.
    """
    messages = []
    for i, turn in enumerate(conversations):
        speaker = turn.get("from")
        if speaker not in LLAVA_ROLES:
            raise ConversationError(
                f"sample {sample_id!r}: turn {i} is from {speaker!r}; expected one of {sorted(LLAVA_ROLES)}"
            )
        value = turn.get("value")
        if not isinstance(value, str):
            raise ConversationError(f"sample {sample_id!r}: turn {i} has no text 'value'")
        count = value.count(IMAGE_PLACEHOLDER)
        if count > 1:
            raise ConversationError(
                f"sample {sample_id!r}: turn {i} holds {count} {IMAGE_PLACEHOLDER} placeholders; one image per message"
            )
        if count:
            value = IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()
        messages.append({"role": LLAVA_ROLES[speaker], "content": value})
    check_turns(messages, sample_id)
    return messages


def check_turns(messages: Sequence[Message], sample_id: str) -> None:
    """Raise unless the messages are an optional system message, then user and assistant alternating."""
    turns = _turns(messages)
    if any(m["role"] == "system" for m in messages[1:]) or not turns:
        raise ConversationError(
            f"sample {sample_id!r}: expected an optional leading system message and turns"
        )
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ConversationError(
                f"sample {sample_id!r}: turn {i} is from {message['role']!r}, expected {expected!r} "
                "(turns alternate, starting with the user)"
            )


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids (``IMAGE_TOKEN_INDEX`` at each placeholder) and labels (``IGNORE_INDEX`` where unsupervised)."""

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    prompt: str

    @property
    def num_images(self) -> int:
        return self.input_ids.count(IMAGE_TOKEN_INDEX)

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def first_difference(expected: str, got: str, context: int = 20) -> str:
    """Where two strings first differ, with a little text around it."""
    i = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    lo = max(0, i - context)
    return f"first difference at character {i}: expected {expected[lo : i + context]!r}, got {got[lo : i + context]!r}"


def decode_text(tokenizer: Any, input_ids: Sequence[int]) -> str:
    """The text of token ids, decoded in one go and exactly (special tokens kept, no space clean-up),
    with the image sentinels left out.

    One decode of the whole sequence matters: SentencePiece decoders strip the leading space of what
    they decode, which would hide a space a piece gained at its start if runs were decoded apart.
    """
    return tokenizer.decode(
        [token for token in input_ids if token != IMAGE_TOKEN_INDEX],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )


def encode_conversation(
    messages: Sequence[Message],
    tokenizer: Any,
    template: Template,
    sample_id: str,
    for_generation: bool = False,
) -> EncodedConversation:
    """Token ids and labels of a conversation, piece by piece, with the two checks.

    For training the conversation ends with an answer and only the answers (with the template's end of
    turn) are supervised. ``for_generation`` takes a conversation that ends with the user and appends
    the assistant's header; nothing is supervised.
    """
    check_turns(messages, sample_id)
    last = _turns(messages)[-1]["role"]
    if last != ("user" if for_generation else "assistant"):
        purpose = (
            "a generation prompt ends with the user"
            if for_generation
            else "a training sample ends with an answer"
        )
        raise ConversationError(f"sample {sample_id!r}: {purpose}, this one ends with {last!r}")
    try:
        segments = template.segments(messages, add_generation_prompt=for_generation)
        prompt = template.render(messages, add_generation_prompt=for_generation)
    except ConversationError as error:
        raise type(error)(f"sample {sample_id!r} ({template.name}): {error}") from None
    joined = "".join(segment.text for segment in segments)
    if joined != prompt:
        raise TemplateMismatchError(
            f"sample {sample_id!r} ({template.name}): the template's pieces do not make up its prompt; "
            + first_difference(prompt, joined)
        )
    input_ids: list[int] = []
    labels: list[int] = []
    for segment in segments:
        if segment.image:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            continue
        ids = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if segment.supervised else [IGNORE_INDEX] * len(ids)
    text = prompt.replace(IMAGE_PLACEHOLDER, "")
    decoded = decode_text(tokenizer, input_ids)
    if decoded != text:
        raise TemplateMismatchError(
            f"sample {sample_id!r} ({template.name}): the pieces, tokenized one by one, do not decode to the "
            f"prompt ({first_difference(text, decoded)}); the labels would not line up with the text. "
            "A SentencePiece tokenizer that adds a space before every encoding needs add_prefix_space=False"
        )
    encoded = EncodedConversation(sample_id, input_ids, labels, prompt)
    if not for_generation and encoded.num_supervised == 0:
        raise ConversationError(
            f"sample {sample_id!r} ({template.name}): no supervised token (every answer is empty after "
            "tokenization); training on it would teach nothing and a batch of such samples has loss 0/0"
        )
    return encoded
