import math

import pytest
import torch

from uniflow.tokenizer.distill import SelfDistillationLoss, adaptive_layer_weights, layer_alignment

ALPHAS = [0.1, 0.4, 0.2]


def hand_paper(alphas, beta):
    num = [(i + 1) / 3 * math.exp(beta * a) for i, a in enumerate(alphas)]
    return [n / sum(num) for n in num]


def hand_figure(alphas, beta):
    e = [math.exp(beta * a) for a in alphas]
    return [(i + 1) / 3 * x / sum(e) for i, x in enumerate(e)]


def hand_softmax_product(alphas, beta):
    s = [(i + 1) / 3 * math.exp(beta * a) for i, a in enumerate(alphas)]
    e = [math.exp(x) for x in s]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize(
    ("normalization", "reference"),
    [("paper", hand_paper), ("figure", hand_figure), ("softmax_product", hand_softmax_product)],
)
def test_weight_normalizations_match_hand_computation(normalization, reference):
    got = adaptive_layer_weights(torch.tensor(ALPHAS, dtype=torch.float64), 2.0, normalization)
    assert got.tolist() == pytest.approx(reference(ALPHAS, 2.0), rel=1e-12)


def test_each_normalization_is_none_of_the_other_two():
    """The library's outputs, not only the hand formulas, must tell the three apart on these alphas."""
    hands = {"paper": hand_paper, "figure": hand_figure, "softmax_product": hand_softmax_product}
    for name in hands:
        got = adaptive_layer_weights(torch.tensor(ALPHAS, dtype=torch.float64), 2.0, name).tolist()
        for other, hand in hands.items():
            if other != name:
                assert got != pytest.approx(hand(ALPHAS, 2.0), rel=1e-6), (name, other)


def test_figure_weights_sum_to_less_than_one():
    """w^base * softmax: at alpha = 0 the sum is (L + 1) / 2L, so it scales lambda_d (logged as weight/sum)."""
    for depth in (1, 4, 24):
        w = adaptive_layer_weights(torch.zeros(depth, dtype=torch.float64), 2.0, "figure")
        assert w.sum().item() == pytest.approx((depth + 1) / (2 * depth), rel=1e-12)


def test_beta_zero_gives_normalised_hierarchical_prior():
    alphas = torch.rand(6, dtype=torch.float64)
    got = adaptive_layer_weights(alphas, 0.0, "paper")
    expected = torch.arange(1, 7, dtype=torch.float64) / 21
    torch.testing.assert_close(got, expected)


def test_larger_misalignment_gets_larger_weight_at_equal_depth_prior():
    # Same depth prior for both layers via ids; the one with larger alpha must dominate.
    w = adaptive_layer_weights(torch.tensor([0.5, 0.1]), 2.0, "paper", layer_ids=[3, 3], depth=3)
    assert w[0] > w[1]


def test_layer_alignment_is_mean_cosine_distance():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert layer_alignment(a, b).item() == pytest.approx(0.5)  # cos = 1 and 0
    assert layer_alignment(a, a).item() == pytest.approx(0.0, abs=1e-7)


def _layers(n, b=2, s=5, d=4, requires_grad=False):
    return [torch.randn(b, s, d, requires_grad=requires_grad) for _ in range(n)]


def test_weights_are_detached_and_gradient_flows_through_alpha():
    student, teacher = _layers(4, requires_grad=True), _layers(4)
    out = SelfDistillationLoss(4, "adaptive", beta=2.0)(student, teacher)
    assert not out.weights.requires_grad
    out.loss.backward()
    # d loss / d student_l must equal w_l * d alpha_l / d student_l (weights treated as constants).
    for layer in range(4):
        s = student[layer].detach().clone().requires_grad_(True)
        layer_alignment(s, teacher[layer]).backward()
        torch.testing.assert_close(student[layer].grad, out.weights[layer] * s.grad)


@pytest.mark.parametrize(
    ("mode", "layers", "expected_ids"),
    [
        ("adaptive", None, [1, 2, 3, 4]),
        ("uniform", None, [1, 2, 3, 4]),
        ("hierarchical", None, [1, 2, 3, 4]),
        ("last", None, [4]),
        ("adaptive", [2, 4], [2, 4]),
        ("last", [1, 2], [2]),
    ],
)
def test_ablation_modes_select_layers_and_weights(mode, layers, expected_ids):
    student, teacher = _layers(4), _layers(4)
    out = SelfDistillationLoss(4, mode, beta=2.0, layers=layers)(student, teacher)
    assert out.layer_ids == expected_ids
    assert out.weights.shape == (len(expected_ids),)
    if mode == "uniform":
        torch.testing.assert_close(out.weights, torch.full((4,), 0.25))
    if mode == "hierarchical":
        torch.testing.assert_close(out.weights, torch.tensor([1.0, 2, 3, 4]) / 10)
    if mode == "last":
        torch.testing.assert_close(out.weights, torch.ones(1))
    assert out.loss.item() == pytest.approx((out.weights * out.alphas).sum().item())


def test_subset_keeps_its_depth_prior():
    student, teacher = _layers(4), _layers(4)
    out = SelfDistillationLoss(4, "adaptive", beta=0.0, layers=[2, 4])(student, teacher)
    torch.testing.assert_close(out.weights, torch.tensor([2.0, 4.0]) / 6)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"outside 1\.\.4"):
        SelfDistillationLoss(4, layers=[0, 5])
    with pytest.raises(ValueError, match="unknown distillation mode"):
        SelfDistillationLoss(4, mode="bogus")
    with pytest.raises(ValueError, match="unknown normalization"):
        adaptive_layer_weights(torch.rand(3), 2.0, "bogus")
    with pytest.raises(ValueError, match="1-D"):
        adaptive_layer_weights(torch.rand(3, 2), 2.0)
