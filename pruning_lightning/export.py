"""``pruning-lightning export``: a trained pruned checkpoint as a physically smaller network.

    pruning-lightning export --config configs/quickstart.yaml --ckpt_path last.ckpt \\
        --output model.pt2 --onnx model.onnx

The checkpoint holds the mask (the PruningCallback's state) and the network's hyperparameters;
:func:`~pruning_lightning.pruning.compact.compact_network` removes every channel on no
input-output path, and the result (BatchNorm folded into the convolutions, weights channels_last:
:func:`~pruning_lightning.pruning.compact.inference_network`) is written as a ``torch.export``
program (``.pt2``, loaded by ``torch.export.load``; the files written here hold no pickled
payload, but a ``.pt2`` from elsewhere can: docs/SECURITY.md) and, with ``--onnx``, as ONNX.
Both take a batch of
any size at the trained image size, as normalised float32 images: ``(pixels / 255 - mean) / std``
per channel, with the ``mean``/``std`` in the checkpoint's hyperparameters (the data's). The
written network is the backbone; the classifier's first step, which makes that input from the
loaders' uint8 batches (:class:`~pruning_lightning.data.normalize.Normalize`), is not in it.
Any file name works (``--output model`` is a ``.pt2`` program too). The outputs are checked
before any work and written whole or not at all.

A checkpoint is read with torch's safe loader only (``weights_only=True``: tensors and plain
data, never code), so a checkpoint from anyone can be exported; the network is then built from
its hyperparameters and weights, not unpickled.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import yaml
from torch import nn

from pruning_lightning.errors import ConfigError
from pruning_lightning.pruning.compact import compact_network, inference_network
from pruning_lightning.pruning.connectivity import effective_masks
from pruning_lightning.pruning.masks import check_masks, kept_counts

# Globals a checkpoint of this project may name beyond torch's safe defaults (which already
# cover tensors, dtypes, OrderedDict and the Counter of MultiStepLR's state): none. Anything a
# future checkpoint really needs goes here, by class, and nothing else.
CHECKPOINT_GLOBALS: tuple[Any, ...] = ()

# The ImageClassifier arguments that fix the network's shape, and their types (a backbone is a
# registry name or, built by class_path, the config that built it).
_ARCHITECTURE: dict[str, tuple[type, ...]] = {
    "backbone": (str, dict),
    "num_classes": (int,),
    "in_channels": (int,),
    "image_size": (int,),
    "width": (int, type(None)),
}


def load_pruned_checkpoint(
    path: str | Path, config_section: Mapping[str, Any] | None = None
) -> tuple[nn.Module, dict[str, torch.Tensor], tuple]:
    """(ImageClassifier on the CPU, masks by parameter name, one example's input shape).

    Only tensors and plain data are read (no pickled code runs), and the model is built from the
    checkpoint's hyperparameters and weights rather than by Lightning's loader, which would read
    the file again and instantiate whatever its hyperparameters name. A backbone built by
    ``class_path`` is code, so it is built from the trusted config's model section
    (``config_section``), never from the checkpoint, which must name the same class.
    """
    from pruning_lightning.classifier import ImageClassifier

    path = Path(path)
    checkpoint = _safe_load(path)
    foreign = f"{path} is not a checkpoint of this application:"
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"{foreign} it holds a {type(checkpoint).__name__}, not a Lightning checkpoint (a dict "
            "with state_dict and hyper_parameters). Pass the .ckpt of a pruning-lightning run."
        )
    weights, hparams = checkpoint.get("state_dict"), checkpoint.get("hyper_parameters")
    if not isinstance(weights, dict) or not isinstance(hparams, dict):
        raise ConfigError(
            f"{foreign} it has no state_dict and hyper_parameters. Pass the .ckpt of a "
            "pruning-lightning run."
        )
    callbacks = checkpoint.get("callbacks")
    state = callbacks.get("PruningCallback") if isinstance(callbacks, dict) else None
    masks = state.get("masks") if isinstance(state, dict) else None
    if masks is not None and not isinstance(masks, Mapping):
        raise ConfigError(f"{foreign} its mask is not a dict of parameter name -> bool tensor.")
    if not masks:
        raise ConfigError(
            f"{path} holds no mask: it is not from a pruned run (no PruningCallback state, or "
            "sparsity 0). Export the checkpoint of a run with --pruning.sparsity above 0."
        )
    arguments = {k: hparams[k] for k in _ARCHITECTURE if k in hparams}
    wrong = [
        k
        for k, v in arguments.items()
        if not isinstance(v, _ARCHITECTURE[k]) or isinstance(v, bool)
    ]
    if wrong or "backbone" not in arguments:
        raise ConfigError(
            f"{foreign} its hyper_parameters do not describe an ImageClassifier (wrong or "
            f"missing: {', '.join(wrong or ['backbone'])})."
        )
    if isinstance(arguments["backbone"], dict):
        arguments["backbone"] = _configured_backbone(path, arguments["backbone"], config_section)
    try:
        model = ImageClassifier(**arguments)
    except ConfigError as err:
        raise ConfigError(f"{foreign} {err}") from None
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(
            f"{foreign} its hyper_parameters build no network ({_first_line(err)})."
        ) from None
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"{foreign} its weights do not fit its hyperparameters ({_first_line(err)})."
        ) from None
    if not all(isinstance(k, str) for k in masks):
        raise ConfigError(f"{foreign} its mask is not a dict of parameter name -> bool tensor.")
    try:
        check_masks(model, masks, complete=False)
    except ConfigError as err:
        raise ConfigError(f"{foreign} {err}") from None
    hp = model.hparams
    return model.eval(), dict(masks), (hp.in_channels, hp.image_size, hp.image_size)


def _configured_backbone(
    path: Path, trained: Mapping[str, Any], config_section: Mapping[str, Any] | None
) -> nn.Module:
    """The backbone the config builds, after checking it is the class the checkpoint names."""
    name = trained.get("class_path")
    if not isinstance(name, str):
        raise ConfigError(
            f"{path} is not a checkpoint of this application: its backbone hyperparameter is "
            "neither a registry name nor a class_path."
        )
    if config_section is None:
        raise ConfigError(
            f"{path} was trained with the backbone {name}, which is code: a checkpoint never "
            "chooses what is imported (docs/SECURITY.md). Pass the run's config.yaml with --config."
        )
    configured = config_section.get("backbone")
    given = configured.get("class_path") if isinstance(configured, dict) else configured
    if given != name:
        raise ConfigError(
            f"--config has model.backbone {given!r} but the checkpoint was trained with {name!r}: "
            "pass the config of that run (its log dir holds config.yaml)."
        )
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--backbone", type=nn.Module)
    try:
        config = parser.parse_object({"backbone": dict(configured)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jsonargparse's deprecation notices
            build = getattr(parser, "instantiate", None) or parser.instantiate_classes
            return build(config).backbone
    except Exception as err:  # the config's class_path or init_args do not build
        raise ConfigError(
            f"--config's model.backbone {name} builds no network ({_first_line(err)})."
        ) from None


def _safe_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` of ``path``; every failure is one ConfigError line that
    says why (never torch's advice to retry unsafely)."""
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path {path} {'is not a file' if path.exists() else 'does not exist'}."
        )
    foreign = f"{path} is not a checkpoint of this application:"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"--ckpt_path {path} cannot be read: {err.strerror}.") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS)):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise here
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{foreign} {safe_load_refusal(str(err))}.") from None
    except Exception as err:  # a truncated, corrupted or foreign file
        raise ConfigError(
            f"{foreign} it is no file of torch.save, or it is truncated or corrupted "
            f"({type(err).__name__}: {_first_line(err).split('. ')[0]})."
        ) from None


def _first_line(err: Exception) -> str:
    """An exception's message, first line only (or its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def safe_load_refusal(message: str) -> str:
    """Why the safe loader refused a file, in a few words, from its error message."""
    name = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if name:
        return (
            f"its pickle names {name.group(1)}, which loading would import and call (code, not "
            "data), so the safe loader refuses it"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    reason = detail.group(1).split(". ")[0].strip().rstrip(".") if detail else "unsafe content"
    return (
        f"its pickle holds more than tensors and plain data ({reason}): the safe loader refuses it"
    )


def _read_config(config: Path) -> dict:
    """The config's model section (``init_args`` unwrapped); a ConfigError if it is not one."""
    if not config.is_file():
        state = "is not a file" if config.exists() else "does not exist"
        raise ConfigError(f"--config {config} {state}.")
    try:
        document = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"--config {config} is not a readable YAML file ({detail}).") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"--config {config} holds a YAML {type(document).__name__}, not a mapping: pass the "
            "run's config.yaml (its log dir holds it)."
        )
    section = document.get("model") or {}
    if isinstance(section, dict):
        section = section.get("init_args", section)
    if not isinstance(section, dict):
        raise ConfigError(
            f"--config {config}: its model section is not a mapping: pass the run's config.yaml."
        )
    return section


def _check_config(config: Path, section: dict, model: nn.Module) -> None:
    """The config's model section must describe the checkpoint's network (a class_path backbone
    was checked when it was built)."""
    for key in ("backbone", "width"):
        if key in section and section[key] != model.hparams.get(key):
            if key == "backbone" and isinstance(section[key], dict):
                continue
            raise ConfigError(
                f"--config {config} has model.{key}={section[key]!r} but the checkpoint was "
                f"trained with {model.hparams.get(key)!r}: pass the config of that run (its "
                "log dir holds config.yaml)."
            )


@dataclass
class ExportReport:
    """What ``export`` prints. ``parameters_*``: every number held (parameters and buffers, the
    folded offsets included), so after / before is the size of the file against the network's.
    ``kept`` / ``effective``: the masked weights, and those of them on an input-output path."""

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
    """Compact the checkpoint's network and write it; returns the written module and counts.

    Bad input (the outputs, the config, the checkpoint) is a ConfigError before any file is
    touched; the outputs appear only once both are complete.
    """
    targets = {"--output": output, "--onnx": onnx}
    targets = {flag: Path(p) for flag, p in targets.items() if p is not None}
    _check_targets(targets, Path(ckpt_path))
    section = _read_config(Path(config)) if config is not None else None
    with _reserved(targets) as files:
        model, masks, input_shape = load_pruned_checkpoint(ckpt_path, section)
        if section is not None:
            _check_config(Path(config), section, model)
        backbone = model.backbone.eval()
        local = {name.removeprefix("backbone."): m for name, m in masks.items()}
        compact = compact_network(backbone, local, input_shape)
        written = inference_network(compact, input_shape)  # BatchNorm folded, channels_last
        example = torch.zeros((2, *input_shape))
        batch = torch.export.Dim("batch", min=1)
        if "--output" in files:
            try:
                program = torch.export.export(written, (example,), dynamic_shapes=({0: batch},))
            except Exception as err:  # e.g. data-dependent control flow in a custom network
                raise ConfigError(
                    f"torch.export cannot trace {type(backbone).__name__} ({type(err).__name__}: "
                    f"{_first_line(err)}): the export needs a network torch.export can capture."
                ) from None
            files["--output"](lambda f: torch.export.save(program, f))
        if "--onnx" in files:
            files["--onnx"](
                lambda f: torch.onnx.export(
                    written,
                    (example,),
                    f,
                    dynamo=True,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes=({0: batch},),
                    external_data=False,  # one self-contained file
                    verbose=False,
                )
            )
    effective = effective_masks(backbone, local, input_shape)
    report = ExportReport(
        parameters_before=_numbers(backbone),
        parameters_after=_numbers(written),
        kept=sum(k for k, _ in kept_counts(local).values()),
        effective=sum(int(e.sum()) for e in effective.values()),
    )
    return written, report


def _numbers(module: nn.Module) -> int:
    """Every number the module's file holds: parameters and (persistent) buffers."""
    return sum(t.numel() for t in module.state_dict().values())


def _check_targets(targets: Mapping[str, Path], ckpt_path: Path) -> None:
    """Output paths that cannot be written are refused before any work is done."""
    if len(targets) == 2 and os.path.abspath(targets["--output"]) == os.path.abspath(
        targets["--onnx"]
    ):
        raise ConfigError("--output and --onnx name the same file: give them different names.")
    for flag, path in targets.items():
        if path.exists() and ckpt_path.exists() and path.samefile(ckpt_path):
            raise ConfigError(f"{flag} {path} is the checkpoint itself: name a new file.")
        if path.is_dir():
            raise ConfigError(
                f"{flag} {path} is a directory: name the file to write, e.g. {path / 'model'}"
                f"{'.onnx' if flag == '--onnx' else '.pt2'}."
            )
        if path.exists() and not path.is_file():
            raise ConfigError(f"{flag} {path} exists and is not a regular file: name a file.")
        if path.name in ("", ".", ".."):
            raise ConfigError(f"{flag} {path} names no file: e.g. model.pt2.")
        ancestor = path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise ConfigError(f"cannot write {flag} {path}: {ancestor} is a file, not a directory.")


@contextmanager
def _reserved(targets: Mapping[str, Path]) -> Iterator[dict[str, Callable]]:
    """A temporary file next to each target, made now (so an unwritable place fails before the
    export work). The body writes each through ``files[flag](save)`` (``save`` gets an open
    binary file); on success the temporaries are renamed over the targets, on any failure they
    and the folders made for them are removed."""
    made: list[Path] = []
    temps: dict[str, Path] = {}
    done = False
    try:
        for flag, path in targets.items():
            temps[flag] = _temporary(flag, path, made)
        yield {flag: _writer(flag, targets[flag], tmp) for flag, tmp in temps.items()}
        umask = os.umask(0)
        os.umask(umask)
        for flag, tmp in temps.items():
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a model file is not
            os.replace(tmp, targets[flag])
        done = True
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink()
        if not done:
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:
                    pass


def _temporary(flag: str, path: Path, made: list[Path]) -> Path:
    """An empty private file ``.export-*`` in ``path``'s folder (made, and listed in ``made``, if
    missing)."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
            made.append(folder)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-")
        os.close(fd)
    except OSError as err:
        raise ConfigError(
            f"cannot write {flag} {path}: creating a file in {path.parent} failed "
            f"({err.strerror or err})."
        ) from None
    return Path(tmp)


def _writer(flag: str, path: Path, tmp: Path) -> Callable[[Callable[[BinaryIO], Any]], None]:
    """``save(file)`` into ``tmp``; a failing disk is a one-line error naming ``path``."""

    def write(save: Callable[[BinaryIO], Any]) -> None:
        try:
            with open(tmp, "wb") as f:
                save(f)
        except OSError as err:
            raise ConfigError(f"cannot write {flag} {path}: {err.strerror or err}.") from None

    return write


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
        f"Exported {report.parameters_after:,} parameters and buffers (the pruned network has "
        f"{report.parameters_before:,}: {report.parameters_after / report.parameters_before:.2%}); "
        f"{report.effective:,} of the {report.kept:,} kept weights lie on an input-output path."
    )
    for path in (args.output, args.onnx):
        if path:
            print(f"  wrote {path}")
    return 0
