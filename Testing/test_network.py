"""The Hermes network: released state-dict layout, arithmetic, shapes, and that it can learn."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from HermesSegmentLib.network import HERMES_R, HermesConfig, HermesNetwork
from HermesSegmentLib.network.prior_fusion import PriorFusionBlock

REFERENCE = Path(__file__).parent / "reference" / "hermes_r_state_dict.tsv"
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hermes_r_state_dict.tsv"


def reference_rows() -> list[tuple[str, str, str]]:
    lines = REFERENCE.read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [(key, shape, dtype) for key, shape, dtype in rows]


def test_reference_copies_match_shared_reference():
    if not SHARED_REFERENCE.exists():
        pytest.skip("../shared/reference is not beside this checkout")
    for name in ("hermes_r_state_dict.tsv", "hermes_r_tasks.tsv"):
        assert (REFERENCE.parent / name).read_text() == (SHARED_REFERENCE.parent / name).read_text(), name


def test_hermes_r_state_dict_matches_reference_line_by_line():
    with torch.device("meta"):
        network = HermesNetwork(HERMES_R)
    ours = [(k, "x".join(map(str, v.shape)), str(v.dtype).removeprefix("torch."))
            for k, v in network.state_dict().items()]
    expected = reference_rows()
    assert len(ours) == len(expected) == 405
    for line, (mine, theirs) in enumerate(zip(ours, expected), start=1):
        assert mine == theirs, f"reference line {line}"
    assert sum(math.prod(v.shape) for v in network.state_dict().values()) == 60_884_998


def test_forward_shapes_and_null_padding(tiny_config):
    torch.manual_seed(0)
    network = HermesNetwork(tiny_config).eval()
    image = torch.randn(2, 1, 32, 32, 48)
    tasks = torch.tensor([[0, 2, -1], [1, -1, -1]])
    modalities = torch.tensor([[0], [5]])
    with torch.inference_mode():
        logits, modality_logits = network(image, tasks, modalities)
    assert logits.shape == (2, 3, 32, 32, 48)
    assert modality_logits.shape == (2, tiny_config.num_modality_slots)
    assert torch.isfinite(logits).all()


def test_null_index_selects_the_last_prior_row(tiny_config):
    network = HermesNetwork(tiny_config)
    site = network.prior_init_fuse_2
    priors = site.select_priors(torch.tensor([[1, -1]]), torch.tensor([[3]]))
    assert torch.equal(priors[0, 0], site.task_prior[1])
    assert torch.equal(priors[0, 1], site.task_prior[tiny_config.num_task_priors])  # null row
    assert torch.equal(priors[0, 2:], site.modality_prior[3])


def _reference_cross_attention(attn, queries, context):
    """Written out with explicit einsums, as the released model computes it."""
    heads = attn.heads
    q, (k, v) = attn.to_q(queries), attn.to_kv(context).chunk(2, dim=-1)
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5, dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
    return attn.to_out(out)


def test_fusion_site_matches_explicit_reference_arithmetic(tiny_config):
    torch.manual_seed(1)
    site = HermesNetwork(tiny_config).prior_init_fuse_3
    features = torch.randn(2, site.task_prior.shape[1], 4, 4, 4)
    tasks, modalities = torch.tensor([[0, 3, -1], [2, -1, -1]]), torch.tensor([[1], [0]])
    fused, priors = site(features, tasks, modalities)

    x = features.flatten(2).transpose(1, 2)
    p = torch.stack([torch.cat([site.task_prior[t], site.modality_prior[m[0]]]) for t, m in zip(tasks, modalities)])
    for block in site.attn_layers:
        assert isinstance(block, PriorFusionBlock)  # a ModuleList yields plain Modules
        agg, ffn = block.prior_aggregate_block, block.prior_ffn
        p = p + _reference_cross_attention(agg.fn,
                                           F.layer_norm(p, p.shape[-1:], agg.norm1.weight, agg.norm1.bias, 1e-5),
                                           F.layer_norm(x, x.shape[-1:], agg.norm2.weight, agg.norm2.bias, 1e-5))
        p = p + ffn.fn.fc2(F.gelu(ffn.fn.fc1(F.layer_norm(p, p.shape[-1:], ffn.norm.weight, ffn.norm.bias, 1e-4))))
        agg, ffn = block.feat_aggregate_block, block.feat_ffn
        x = x + _reference_cross_attention(agg.fn,
                                           F.layer_norm(x, x.shape[-1:], agg.norm1.weight, agg.norm1.bias, 1e-5),
                                           F.layer_norm(p, p.shape[-1:], agg.norm2.weight, agg.norm2.bias, 1e-5))
        x = x + ffn.fn.fc2(F.gelu(ffn.fn.fc1(F.layer_norm(x, x.shape[-1:], ffn.norm.weight, ffn.norm.bias, 1e-4))))
    torch.testing.assert_close(priors, p)
    torch.testing.assert_close(fused, x.transpose(1, 2).reshape(features.shape))


def test_residual_block_is_pre_activation_with_instance_norm_eps_1e4(tiny_config):
    torch.manual_seed(2)
    block = HermesNetwork(tiny_config).down1.conv[1]
    x = torch.randn(1, 8, 6, 6, 6)

    def preact(conv, t):
        return F.conv3d(F.relu(F.instance_norm(t, eps=1e-4)), conv.conv.weight, padding=1)

    expected = preact(block.conv2, preact(block.conv1, x)) + preact(block.shortcut, x)
    torch.testing.assert_close(block(x), expected)


def test_mask_head_is_a_dynamic_per_task_dot_product(tiny_config):
    torch.manual_seed(3)
    network = HermesNetwork(tiny_config)
    features = torch.randn(1, tiny_config.base_channels, 4, 4, 4)
    posteriors = [torch.randn(1, 2, c) for c in tiny_config.site_channels]
    logits = network.out(features, posteriors)
    kernels = network.out.task_kernels(posteriors)
    expected = (features[0, None] * kernels[0, :, :, None, None, None]).sum(1)
    torch.testing.assert_close(logits[0], expected)


def test_config_rejects_head_dim_that_does_not_divide_the_width():
    from HermesSegmentLib.errors import HermesError

    with pytest.raises(HermesError, match="head_dim"):
        HermesConfig(base_channels=8, head_dim=24)


@pytest.mark.slow
def test_tiny_network_learns_a_few_steps(tiny_config):
    """A few AdamW steps on a fixed toy task reduce BCE + Dice: gradients reach every part."""
    torch.manual_seed(4)
    network = HermesNetwork(tiny_config).train()
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 32)] * 3, indexing="ij"))
    ball = (grid.pow(2).sum(0) < 0.4).float()
    image = (ball + 0.1 * torch.randn(2, 1, 32, 32, 32))
    target = torch.stack([ball, 1 - ball])[None].repeat(2, 1, 1, 1, 1)
    tasks, modalities = torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0], [0]])
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)

    def loss_fn():
        logits, modality_logits = network(image, tasks, modalities)
        probs = torch.sigmoid(logits)
        dice = 1 - (2 * (probs * target).sum((2, 3, 4)) + 1) / (probs.sum((2, 3, 4)) + target.sum((2, 3, 4)) + 1)
        return F.binary_cross_entropy_with_logits(logits, target) + dice.mean() + 0.01 * F.cross_entropy(
            modality_logits, modalities[:, 0])

    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert network.prior_fuse_6.task_prior.grad is not None
