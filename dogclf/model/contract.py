"""The contract every backbone must meet, as a check plugin authors can run."""

from __future__ import annotations

from typing import Any

from dogclf.backbones.spec import BackboneSpec, validate_spec
from dogclf.errors import BackboneContractError

__all__ = ["check_backbone"]


def check_backbone(backbone: str | BackboneSpec, *, batch_size: int = 2) -> dict[str, Any]:
    """Checks that a backbone works with dogclf, without downloading weights.

    Builds it with random weights and checks that: the spec is valid; the
    module maps ``(N, 3, input_size, input_size)`` to finite ``(N, num_features)``
    features in eval and in train mode; eval mode is deterministic; it has
    parameters to freeze; and with a new head, freezing leaves only the head
    trainable, keeps BatchNorm in eval mode during training, and lets a training
    step change the head but not the backbone.

    Args:
        backbone: A registered name or a spec.
        batch_size: Images per test batch (2 or more; BatchNorm needs 2 in train mode).

    Returns:
        A report: name, distribution, num_features, input_size, parameter count.

    Raises:
        BackboneContractError: Listing every broken point.
        UnknownBackboneError: If the name is not registered.
    """
    import torch

    from dogclf.backbones.registry import get_backbone
    from dogclf.model.net import DogClassifierNet, HeadConfig, build_head

    spec = get_backbone(backbone) if isinstance(backbone, str) else backbone
    validate_spec(spec, where=spec.distribution or "check_backbone()")
    failures: list[str] = []
    size = spec.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(max(2, batch_size), 3, size, size, generator=generator)
    expected = (images.shape[0], spec.num_features)

    try:
        module = spec.build(pretrained=False, progress=False)
    except Exception as exc:
        raise BackboneContractError(
            f"Backbone {spec.name!r} ({spec.distribution}): build(pretrained=False, progress=False) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    n_params = sum(p.numel() for p in module.parameters())
    if n_params == 0:
        failures.append("the module has no parameters")

    for mode in ("eval", "train"):
        module.train(mode == "train")
        try:
            with torch.no_grad():
                out = module(images)
        except Exception as exc:
            failures.append(f"forward in {mode} mode raised {type(exc).__name__}: {exc}")
            continue
        if not isinstance(out, torch.Tensor):
            failures.append(f"forward in {mode} mode returned {type(out).__name__}, expected a Tensor")
        elif tuple(out.shape) != expected:
            failures.append(f"forward in {mode} mode returned shape {tuple(out.shape)}, expected {expected}")
        elif not torch.isfinite(out).all():
            failures.append(f"forward in {mode} mode returned non-finite values")

    module.eval()
    if not failures:
        with torch.no_grad():
            if not torch.allclose(module(images), module(images), atol=1e-5):
                failures.append("eval-mode forward is not deterministic")

    if not failures:
        net = DogClassifierNet(module, build_head(spec.num_features, 3, HeadConfig()), frozen=True)
        net.train()
        trainable = {n for n, p in net.named_parameters() if p.requires_grad}
        if any(not n.startswith("head.") for n in trainable):
            failures.append("freezing left backbone parameters trainable")
        bn_training = [
            n
            for n, m in net.backbone.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
        ]
        if bn_training:
            failures.append(f"BatchNorm layers stayed in train mode while frozen: {', '.join(bn_training[:3])}")
        before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        head_before = [p.detach().clone() for p in net.head.parameters()]
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
        loss = torch.nn.functional.cross_entropy(net(images), torch.arange(images.shape[0]) % 3)
        loss.backward()
        optimizer.step()
        changed = [k for k, v in net.backbone.state_dict().items() if not torch.equal(v, before[k])]
        if changed:
            failures.append(f"a frozen training step changed backbone state: {', '.join(changed[:3])}")
        if all(torch.equal(a, b) for a, b in zip(head_before, net.head.parameters(), strict=True)):
            failures.append("a training step did not change the head")

    if failures:
        raise BackboneContractError(
            f"Backbone {spec.name!r} ({spec.distribution or 'unregistered'}) breaks the dogclf backbone contract:\n- "
            + "\n- ".join(failures)
        )
    return {
        "name": spec.name,
        "distribution": spec.distribution,
        "num_features": spec.num_features,
        "input_size": size,
        "parameters": n_params,
    }
