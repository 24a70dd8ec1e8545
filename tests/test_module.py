import pytest
import torch
import torch.nn.functional as F

from lllite import LLLiteModule
from lllite.sdxl.module import conditioning_stride, token_grid


@pytest.mark.parametrize("depth, stride", [(1, 8), (2, 16), (3, 32)])
def test_embedding_has_one_token_per_cell_of_the_blocks_grid(depth, stride):
    module = LLLiteModule(in_dim=40, cond_emb_dim=8, network_dim=6, depth=depth)
    image = torch.rand(2, 3, 128, 96) * 2 - 1
    grid = (128 // stride, 96 // stride)
    assert conditioning_stride(depth) == stride
    assert module.embed(image, grid).shape == (2, grid[0] * grid[1], 8)


def test_module_matches_the_plain_formula():
    torch.manual_seed(0)
    module = LLLiteModule(in_dim=10, cond_emb_dim=4, network_dim=6, depth=1, zero_init=False)
    image = torch.rand(1, 3, 16, 24) * 2 - 1
    x = torch.randn(1, 2 * 3, 10)
    emb = module.embed(image, (2, 3))

    c = module.conditioning1
    expected_emb = F.conv2d(F.relu(F.conv2d(image, c[0].weight, c[0].bias, stride=4)), c[2].weight, c[2].bias, stride=2)
    expected_emb = expected_emb.reshape(1, 4, 6).permute(0, 2, 1)  # row-major tokens
    h = F.relu(x @ module.down[0].weight.T + module.down[0].bias)
    h = F.relu(torch.cat([expected_emb, h], -1) @ module.mid[0].weight.T + module.mid[0].bias)
    expected = h @ module.up[0].weight.T + module.up[0].bias

    torch.testing.assert_close(emb, expected_emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(module(x, emb), expected, rtol=0, atol=1e-6)


def test_fresh_module_changes_nothing():
    module = LLLiteModule(in_dim=10, cond_emb_dim=4, network_dim=6, depth=2)
    emb = torch.randn(3, 5, 4)
    assert torch.equal(module(torch.randn(3, 5, 10), emb), torch.zeros(3, 5, 10))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_parameter_names_are_kohyas(depth):
    names = set(LLLiteModule(in_dim=10, cond_emb_dim=4, network_dim=6, depth=depth).state_dict())
    conv = {"conditioning1.0", "conditioning1.2"} | ({"conditioning1.4"} if depth == 3 else set())
    layers = conv | {"down.0", "mid.0", "up.0"}
    assert names == {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}


def test_token_grid_rounds_odd_sizes_up_like_the_unets_downsamplers():
    assert token_grid((109, 63), 1) == (109, 63)
    assert token_grid((109, 63), 2) == (55, 32)
    assert token_grid((109, 63), 3) == (28, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_dim=8, cond_emb_dim=5), "even"),
    (dict(in_dim=8, depth=4), "depth"),
    (dict(in_dim=0), "positive"),
])
def test_bad_dimensions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLLiteModule(**kwargs)


@pytest.mark.parametrize("latent", [(8, 12), (11, 15)])
def test_embedding_terms_together_equal_each_groups_own(latent):
    """Training's batched embedding (every module's convolutions as matmuls over patches, all modules at once) gives
    each group's terms as its modules compute them one by one, at every depth; an odd latent's image is padded
    to a multiple of 32 pixels, as the network pads it, and the embeddings are cropped to the token grid."""
    from lllite.sdxl.group import ModuleGroup, embedding_terms_together

    torch.manual_seed(0)
    groups = [ModuleGroup([f"{depth}.{i}" for i in range(count)],
                          [LLLiteModule(in_dim=12, cond_emb_dim=6, network_dim=5, depth=depth, zero_init=False)
                           for _ in range(count)])
              for depth, count in [(1, 3), (2, 1), (3, 2), (2, 2)]]
    image = torch.rand(2, 3, -(-latent[0] * 8 // 32) * 32, -(-latent[1] * 8 // 32) * 32) * 2 - 1
    together = embedding_terms_together(groups, image, latent)
    for group, terms in zip(groups, together):
        torch.testing.assert_close(terms, group.embedding_terms(image, latent), rtol=1e-5, atol=1e-6)
