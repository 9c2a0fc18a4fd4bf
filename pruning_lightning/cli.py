"""The command line: LightningCLI with the classifier, any datamodule and a `pruning` group.

    pruning-lightning fit --config configs/cifar10_resnet50.yaml --pruning.method force \
        --pruning.sparsity 0.995

`--data` picks the datamodule class (CIFAR10DataModule, TinyImageNetDataModule, ...); the number of
classes, channels and the image size flow from it into the model, so a config never repeats them.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import torch.distributed
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import pruning_lightning.data  # registers the datamodules for `--data NAME`
from pruning_lightning.callback import PruningCallback
from pruning_lightning.classifier import ImageClassifier
from pruning_lightning.errors import ConfigError
from pruning_lightning.lightning_internals import set_argument_help
from pruning_lightning.models import BACKBONES
from pruning_lightning.pruning.registry import method_names

DATAMODULES = [name for name in pruning_lightning.data.__all__ if name != "ImageDataModule"]


class PruningArgumentParser(LightningArgumentParser):
    """jsonargparse's errors, plus the datamodule names when `--data` is what went wrong."""

    def error(self, message: str, ex: Exception | None = None):
        if 'key "data"' in message:
            message += (
                f"\n  Datamodules: {', '.join(DATAMODULES)} (or the import path of any "
                "LightningDataModule), e.g. --data CIFAR10DataModule."
            )
        super().error(message, ex)


class PruningCLI(LightningCLI):
    """LightningCLI plus the PruningCallback as its own argument group, `--pruning.*`."""

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        self._given_backbone = _backbone_of(self.config)

    def before_instantiate_classes(self) -> None:
        # Lightning has read `--ckpt_path`'s hyperparameters into the config by now: they may set
        # values, but the backbone's code comes from the config alone (docs/SECURITY.md)
        trained = _backbone_of(self.config)
        if trained != self._given_backbone:
            raise ConfigError(
                f"--ckpt_path was trained with the backbone {trained!r} but the config names "
                f"{self._given_backbone!r}: pass the config of that run (its log dir holds "
                "config.yaml)."
            )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(PruningCallback, "pruning")
        _describe_methods(parser)
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the final weights (prints test accuracy).",
        )
        for attribute in ("num_classes", "in_channels", "image_size"):
            parser.link_arguments(f"data.{attribute}", f"model.{attribute}", apply_on="instantiate")
        for attribute in ("mean", "std"):  # lists: the logged hparams.yaml stays plain YAML
            parser.link_arguments(
                f"data.{attribute}",
                f"model.{attribute}",
                compute_fn=_floats,
                apply_on="instantiate",
            )

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.interrupted:
            return
        results = self.trainer.test(self.model, datamodule=self.datamodule)
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if self.trainer.is_global_zero and log_dir is not None:
            # what sweeps read back: the test metrics of the final weights
            path = Path(log_dir) / "test_metrics.json"
            path.write_text(json.dumps(results[0] if results else {}, indent=1))


def _describe_methods(parser: LightningArgumentParser) -> None:
    """`--pruning.method`'s and `--model.backbone`'s help list the registries as they are now
    (methods added by users too)."""
    set_argument_help(
        parser, "pruning.method", f"Pruning method, one of: {', '.join(method_names())}."
    )
    set_argument_help(
        parser,
        "model.backbone",
        f"Backbone network: one of {', '.join(BACKBONES)}, or any nn.Module as "
        "class_path/init_args (torchvision, timm, a class importable from the current directory).",
    )


def build_cli(args: ArgsType = None, run: bool = True) -> PruningCLI:
    """The CLI object; `run=False` parses and instantiates without running a subcommand."""
    return PruningCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        parser_class=PruningArgumentParser,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Console entry point; bad input ends with its message, not a traceback.

    ``export`` is not a Trainer method, so it is dispatched here (pruning_lightning/export.py).
    """
    argv = sys.argv[1:] if args is None else args
    if os.getcwd() not in sys.path:  # a config's class_path may name the user's own module
        sys.path.append(os.getcwd())
    if isinstance(argv, list | tuple) and list(argv[:1]) == ["export"]:
        from pruning_lightning.export import main as export_main

        code = export_main(list(argv[1:]))
        if code:
            sys.exit(code)
        return
    try:
        build_cli(args)
    except pickle.UnpicklingError as err:  # torch's safe load refused a --ckpt_path
        from pruning_lightning.export import safe_load_refusal

        print(
            "pruning-lightning: error: --ckpt_path is not a checkpoint of this application: "
            f"{safe_load_refusal(str(err))}.",
            file=sys.stderr,
        )
        sys.exit(2)
    except Exception as err:
        cause = _config_error(err)
        if cause is None:
            raise
        print(f"pruning-lightning: error: {cause}", file=sys.stderr)
        sys.exit(2)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Close the DDP process group while Python is still up.

    Lightning's Trainer leaves it to interpreter exit, where destroying gloo's worker threads
    can abort a finished run ("terminate called without an active exception", exit -6: seen once
    in CI after a DDP fit + test had printed its results).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _floats(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _backbone_of(config) -> str | None:
    """The backbone a parsed config names: a registry name or the class_path of a module."""
    subcommand = config.get("subcommand")
    backbone = (config[subcommand] if subcommand else config).get("model.backbone")
    return getattr(backbone, "class_path", backbone)


def _config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err`: jsonargparse re-raises instantiation errors as its own. A
    missing optional package (a logger's or a backbone's) is one too: the fix is an install."""
    while err is not None and not isinstance(err, ConfigError | ModuleNotFoundError):
        err = err.__cause__ or err.__context__
    if isinstance(err, ModuleNotFoundError):
        text = (str(err).strip().splitlines() or [repr(err)])[0].rstrip(".")
        # Lightning's loggers raise it with a requirement text and no module name
        top = err.name.split(".")[0] if err.name else next((e for e in _EXTRAS if e in text), "")
        if top in _EXTRAS:
            return ConfigError(f"{text}: install the extra, pip install -e '.[{top}]'.")
        return ConfigError(
            f"{text}: check the class_path (a module of your own must be importable from the "
            "current directory), or install the package that provides it."
        )
    return err


#: The optional packages a config may need, each the name of this project's extra installing it.
_EXTRAS = ("timm", "mlflow", "wandb")
