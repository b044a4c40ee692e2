import pytest
import torch

from uniflow import UniFlowTokenizer


@pytest.mark.slow
def test_tiny_tokenizer_overfits_one_batch(tiny_config_path):
    torch.manual_seed(0)
    tok = UniFlowTokenizer.from_config(tiny_config_path).train()
    from skimage import data
    from torchvision.transforms.functional import resize

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    images = torch.stack([resize(photo[:, i * 128 : i * 128 + 256, j * 128 : j * 128 + 256], [64, 64], antialias=True)
                          for i in range(2) for j in range(2)]).clamp(0, 1)  # fmt: skip
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        out = tok.training_losses(images, generator=gen)
        out["total"].backward()
        opt.step()
        losses.append(out["flow"].item())
    start, end = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert end * 5 <= start, f"flow loss fell only from {start:.4f} to {end:.4f}"
