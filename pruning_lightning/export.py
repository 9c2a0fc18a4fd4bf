"""``pruning-lightning export``: a trained pruned checkpoint as a physically smaller network.

    pruning-lightning export --config configs/quickstart.yaml --ckpt_path last.ckpt \\
        --output model.pt2 --onnx model.onnx

The checkpoint holds the mask (the PruningCallback's state) and the network's hyperparameters;
:func:`~pruning_lightning.pruning.compact.compact_network` removes every channel on no
input-output path, and the result is written as a ``torch.export`` program (``.pt2``, loaded by
``torch.export.load`` without unpickling code) and, with ``--onnx``, as ONNX. Both take a batch of
any size at the trained image size. Files are written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.compact import compact_network
from pruning_lightning.pruning.masks import kept_counts


def load_pruned_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor], tuple]:
    """(ImageClassifier on the CPU, masks by parameter name, one example's input shape)."""
    from pruning_lightning.classifier import ImageClassifier

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ConfigError(f"{path} is not a readable checkpoint: {err}") from err
    state = (checkpoint.get("callbacks") or {}).get("PruningCallback") or {}
    masks = state.get("masks")
    if not masks:
        raise ConfigError(
            f"{path} holds no mask: it is not from a pruned run (no PruningCallback state, or "
            "sparsity 0). Export the checkpoint of a run with --pruning.sparsity above 0."
        )
    model = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    hp = model.hparams
    return model, dict(masks), (hp.in_channels, hp.image_size, hp.image_size)


def _check_config(config: Path, model: nn.Module) -> None:
    """The config's model section must describe the checkpoint's network."""
    if not config.is_file():
        raise ConfigError(f"--config {config} does not exist.")
    section = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    section = section.get("init_args", section)
    for key in ("backbone", "width"):
        if key in section and section[key] != model.hparams.get(key):
            raise ConfigError(
                f"--config {config} has model.{key}={section[key]!r} but the checkpoint was "
                f"trained with {model.hparams.get(key)!r}: pass the config of that run (its "
                "log dir holds config.yaml)."
            )


@dataclass
class ExportReport:
    parameters_before: int
    parameters_after: int
    kept: int
    effective: int


def export_checkpoint(
    ckpt_path: str | Path,
    output: str | Path | None = None,
    onnx: str | Path | None = None,
    config: str | Path | None = None,
) -> tuple[nn.Module, ExportReport]:
    """Compact the checkpoint's network and write it; returns the compact module and counts."""
    model, masks, input_shape = load_pruned_checkpoint(ckpt_path)
    if config is not None:
        _check_config(Path(config), model)
    backbone = model.backbone.eval()
    local = {name.removeprefix("backbone."): m for name, m in masks.items()}
    compact = compact_network(backbone, local, input_shape)
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1)
    if output is not None:
        program = torch.export.export(compact, (example,), dynamic_shapes=({0: batch},))
        _write(Path(output), lambda tmp: torch.export.save(program, tmp))
    if onnx is not None:
        _write(
            Path(onnx),
            lambda tmp: torch.onnx.export(
                compact,
                (example,),
                tmp,
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                external_data=False,  # one self-contained file
                verbose=False,
            ),
        )
    weights = [m.weight for m in compact.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    report = ExportReport(
        parameters_before=sum(p.numel() for p in backbone.parameters()),
        parameters_after=sum(p.numel() for p in compact.parameters()),
        kept=sum(k for k, _ in kept_counts(local).values()),
        effective=sum(int((w != 0).sum()) for w in weights),
    )
    return compact, report


def _write(path: Path, save) -> None:
    """``save(tmp)`` into a temporary file next to ``path``, renamed over it on success only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix, prefix=".export-")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        save(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a model file is not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: Sequence[str]) -> int:
    """``pruning-lightning export ...``; bad input exits 2 with its message."""
    parser = argparse.ArgumentParser(
        prog="pruning-lightning export",
        description="Write a trained pruned checkpoint as a smaller network: every channel on "
        "no input-output path removed (torch.export .pt2 and/or ONNX).",
    )
    parser.add_argument("--config", help="the run's config, checked against the checkpoint")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint of a pruned run")
    parser.add_argument("--output", help="torch.export program to write, e.g. model.pt2")
    parser.add_argument("--onnx", help="ONNX file to write, e.g. model.onnx")
    args = parser.parse_args(argv)
    if args.output is None and args.onnx is None:
        parser.error("pass --output model.pt2 and/or --onnx model.onnx")
    try:
        _, report = export_checkpoint(args.ckpt_path, args.output, args.onnx, args.config)
    except ConfigError as err:
        print(f"pruning-lightning export: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Exported {report.parameters_after:,} parameters (the pruned network has "
        f"{report.parameters_before:,}: {report.parameters_after / report.parameters_before:.2%}); "
        f"{report.effective:,} of the {report.kept:,} kept weights lie on an input-output path."
    )
    for path in (args.output, args.onnx):
        if path:
            print(f"  wrote {path}")
    return 0
