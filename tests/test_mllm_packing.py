"""Packed training samples (``mllm.pack_by_image``): several questions about one image in one sequence,
their common prefix computed once, with the loss and gradients of the separate samples."""

from __future__ import annotations

import json

import pytest
import torch
from mllm_fakes import smollm2_tokenizer, tiny_llama
from PIL import Image

from uniflow.data.vqa_formats import read_llava_training_json
from uniflow.understanding.mllm import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    MLLMProbe,
    collate_mllm,
    encode_conversation,
    get_template,
)
from uniflow.understanding.mllm.data import LlavaTrainingSet
from uniflow.understanding.mllm.packing import PAD, PREFIX, pack_samples, turn_attention

VISION_DIM = 8
QUESTIONS = [
    ("Is there a star in the image?", "yes"),
    ("Is there a cross in the image?", "no"),
    ("What colour is the largest shape?", "magenta"),
    ("How many shapes are there?", "3"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


def sample(tokenizer, sample_id, question, answer, features=None, image_first=True):
    content = f"<image>\n{question}" if image_first else f"{question}\n<image>"
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    template = get_template("chat", tokenizer, system="")
    encoded = encode_conversation(messages, tokenizer, template, sample_id)
    item = {"id": sample_id, "input_ids": encoded.input_ids, "labels": encoded.labels}
    if features is not None:
        item["image_features"] = features
    return item


def test_the_common_prefix_comes_once_and_each_turn_starts_unsupervised(tokenizer):
    samples = [sample(tokenizer, f"q{k}", q, a) for k, (q, a) in enumerate(QUESTIONS)]
    packed = pack_samples(samples)
    turns = packed["turns"]
    length = turns.count(PREFIX)
    assert packed["input_ids"][:length] == samples[0]["input_ids"][:length]
    assert IMAGE_TOKEN_INDEX in packed["input_ids"][:length]
    assert set(turns) == {PREFIX, 1, 2, 3, 4}
    for k, s in enumerate(samples, start=1):
        rest = [t for t, turn in zip(packed["input_ids"], turns) if turn == k]
        labels = [x for x, turn in zip(packed["labels"], turns) if turn == k]
        assert packed["input_ids"][:length] + rest == s["input_ids"]
        assert labels == s["labels"][length:]
        assert labels[0] == IGNORE_INDEX  # its logits would come from the previous turn
    # The packed row is shorter than the samples together by the prefix, once per extra sample.
    assert len(packed["input_ids"]) == sum(len(s["input_ids"]) for s in samples) - 3 * length


def test_an_image_outside_the_common_prefix_cannot_be_packed(tokenizer):
    first = sample(tokenizer, "q0", *QUESTIONS[0], image_first=False)
    second = sample(tokenizer, "q1", *QUESTIONS[2], image_first=False)
    with pytest.raises(ValueError, match="image placeholder of 'q0' is not in their common prefix"):
        pack_samples([first, second])


def test_turn_attention_keeps_turns_apart_and_restarts_positions():
    turns = torch.tensor([[0, 0, 1, 1, 2, 2, 2, PAD]])
    mask, positions = turn_attention(turns, torch.float32)
    allowed = mask[0, 0] == 0
    assert positions[0, :7].tolist() == [0, 1, 2, 3, 2, 3, 4]
    assert allowed[4].tolist() == [True, True, False, False, True, False, False, False]
    assert allowed[3].tolist() == [True, True, True, True, False, False, False, False]
    assert allowed[7].tolist() == [False] * 7 + [True]  # padding: itself only, no empty softmax row


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_the_separate_samples(tokenizer, attention):
    torch.manual_seed(0)
    lm = tiny_llama(tokenizer, initializer_range=0.2, attn_implementation=attention)
    probe = MLLMProbe(lm, tokenizer, VISION_DIM, trainable="full")
    images = torch.randn(2, 4, VISION_DIM)
    first = [sample(tokenizer, f"a{k}", q, a, images[0]) for k, (q, a) in enumerate(QUESTIONS)]
    second = [sample(tokenizer, f"b{k}", q, a, images[1]) for k, (q, a) in enumerate(QUESTIONS[1:3])]
    alone = sample(tokenizer, "c", "What shape is the largest object?", "circle", images[1])

    def loss_and_grads(samples):
        probe.zero_grad()
        loss = probe(collate_mllm(samples, probe.pad_token_id))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in probe.parameters() if p.requires_grad]

    separate, separate_grads = loss_and_grads([*first, *second, alone])
    # Packed rows of different lengths (right padding) beside an unpacked sample.
    packed, packed_grads = loss_and_grads([pack_samples(first), pack_samples(second), alone])
    assert torch.allclose(packed, separate, atol=1e-5)
    for a, b in zip(packed_grads, separate_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_training_set_packs_the_questions_of_each_image(tokenizer, tmp_path):
    records = []
    for index in range(3):
        Image.new("RGB", (8, 8), (40 * index, 0, 0)).save(tmp_path / f"{index}.png")
        for k, (question, answer) in enumerate(QUESTIONS[: index + 1]):
            conversation = [
                {"from": "human", "value": f"<image>\n{question}"},
                {"from": "gpt", "value": answer},
            ]
            records.append({"id": f"{index}-{k}", "image": f"{index}.png", "conversations": conversation})
    records.append(
        {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    )
    (tmp_path / "train.json").write_text(json.dumps(records))
    samples = read_llava_training_json(tmp_path / "train.json")
    template = get_template("chat", tokenizer, system="")
    packed = LlavaTrainingSet(samples, tmp_path, tokenizer, template, 8, (0.5, 0.5, 0.5), pack_by_image=True)
    plain = LlavaTrainingSet(samples, tmp_path, tokenizer, template, 8, (0.5, 0.5, 0.5))
    assert (len(packed), len(plain)) == (4, 7)
    assert packed[2]["id"] == "2-0+2-1+2-2" and max(packed[2]["turns"]) == 3
    assert packed[2]["image"].shape == (3, 8, 8)
    assert "turns" not in packed[0] and "turns" not in packed[3]  # one sample: nothing to share
