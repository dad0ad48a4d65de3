"""`PerImageGraph`: a batched pass that gives every image its one-image MAML-family prediction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.deploy import adapt
from medmeta.deploy.per_image_graph import PerImageGraph
from tests._helpers.deploy import png_folder, untrained_checkpoint


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("maml", {}),
        ("fomaml", {}),
        ("meta_sgd", {}),
        ("anil", {}),
        ("reptile", {}),
        ("maml_pp", {}),
        ("maml_pp", {"bn_stats": "running"}),
    ],
)
def test_each_row_equals_the_one_image_prediction(
    tmp_path: Path, method: str, options: dict[str, object]
) -> None:
    model = adapt(
        untrained_checkpoint(tmp_path, method, {"n_way": 3, **options}), png_folder(tmp_path / "s", size=16)
    )
    assert model.per_image
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 16, 16, generator=g)  # normalised images
    graph = PerImageGraph(model.predictor).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        batched = graph(x)  # (5, 3)
        one_by_one = model.logits_from_inputs(x)  # one image at a time
        whole_batch = model.predictor.predict(x)  # batch statistics over all five: not what a user gets
    assert batched.shape == (5, 3)
    assert torch.allclose(batched, one_by_one, atol=1e-5, rtol=1e-5), (batched - one_by_one).abs().max()
    if options.get("bn_stats") != "running":
        assert not torch.allclose(whole_batch, one_by_one, atol=1e-3)  # the graph is not the batch forward


def test_the_graph_holds_copies_and_leaves_the_method_untouched(tmp_path: Path) -> None:
    model = adapt(untrained_checkpoint(tmp_path, "maml", {"n_way": 3}), png_folder(tmp_path / "s", size=16))
    before = {k: v.clone() for k, v in model.method.state_dict().items()}
    graph = PerImageGraph(model.predictor)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in graph.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.method.state_dict().items())


def test_resnet12_residual_blocks_get_per_image_statistics_too() -> None:
    from medmeta.methods.gradient_based.maml import MAML, MAMLOptions
    from medmeta.models.backbones import build_backbone
    from medmeta.tasks.episode import Support

    torch.manual_seed(0)
    backbone = build_backbone("resnet12", in_channels=3, image_size=32, widths=(8, 8, 8, 8))
    method = MAML(backbone, MAMLOptions(n_way=3)).eval()
    with torch.no_grad():
        predictor = method.adapt(Support(torch.randn(6, 3, 32, 32), torch.arange(3).repeat_interleave(2), 3))
        x = torch.randn(4, 3, 32, 32)
        batched = PerImageGraph(predictor)(x)
        one_by_one = torch.cat([predictor.predict(xi[None]) for xi in x])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
