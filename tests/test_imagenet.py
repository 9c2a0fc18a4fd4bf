"""ImageNet: the data module in both layouts, its error messages, the torchvision backbones and
the paper's config run end to end (fast_dev_run, one process and DDP) on a generated miniature."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision
from data_fixtures import (
    IMAGENET_WNIDS,
    make_imagenet,
    presence_only_imagenet_archives,
)
from test_data import assert_split_labels
from torch import nn

from pruning_lightning.data import ImageNetDataModule
from pruning_lightning.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from pruning_lightning.errors import ConfigError
from pruning_lightning.models import FIXED_WIDTH, build_backbone

pytestmark = pytest.mark.filterwarnings("ignore:ImageNet in .* class folders")
CONFIG = Path(__file__).parents[1] / "configs" / "imagenet_resnet50.yaml"


def module(data_dir: Path, **kwargs) -> ImageNetDataModule:
    options = dict(num_workers=0, batch_size=2, crop_size=32, resize_size=36) | kwargs
    return ImageNetDataModule(data_dir=str(data_dir), **options)


@pytest.fixture
def archives_accepted(monkeypatch):
    """torchvision checks the official md5s; accept the fixture archives for this test."""
    import torchvision.datasets.imagenet as tv_imagenet

    monkeypatch.setattr(tv_imagenet, "_verify_archive", tv_imagenet._verify_archive)
    presence_only_imagenet_archives()


# --- loading ----------------------------------------------------------------------------------


def test_folder_layout_labels_sizes_and_transforms(tmp_path):
    make_imagenet(tmp_path, per_class=10, val_per_class=3)
    dm = module(tmp_path)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 3, 32)
    assert dm.classes == sorted(IMAGENET_WNIDS)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (29, 1, 9)
    for split in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert_split_labels(split, 3, IMAGENET_MEAN, IMAGENET_STD, False)
        assert split[0][0].shape == (3, 32, 32)
    names = [type(t).__name__ for t in dm.train_transform().transforms]
    assert names[:1] == ["RandomResizedCropFlip"]
    names = [type(t).__name__ for t in dm.eval_transform().transforms]
    assert names[:3] == ["ToImage", "Resize", "CenterCrop"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.int64


def test_archive_layout_is_extracted_once_with_the_devkit_labels(tmp_path, archives_accepted):
    make_imagenet(tmp_path, layout="archives", per_class=5, val_per_class=2)
    dm = module(tmp_path)
    dm.prepare_data()
    assert sorted(os.listdir(tmp_path / "train")) == sorted(IMAGENET_WNIDS)
    # the flat official val set sorted into class folders by the devkit's ground truth
    assert sorted(os.listdir(tmp_path / "val")) == sorted(IMAGENET_WNIDS)
    assert (tmp_path / "meta.bin").is_file()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset) + len(dm.val_dataset), len(dm.test_dataset)) == (15, 6)
    for split in (dm.train_dataset, dm.test_dataset):
        assert_split_labels(split, 3, IMAGENET_MEAN, IMAGENET_STD, False)
    # a second run finds the folders and parses nothing (the archives could even be gone)
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (tmp_path / name).unlink()
    module(tmp_path).prepare_data()


def test_class_subset_and_train_subset(tmp_path):
    make_imagenet(tmp_path, per_class=6)
    dm = module(tmp_path, class_subset=2, train_subset=8)
    assert dm.classes == sorted(IMAGENET_WNIDS)[:2] and dm.num_classes == 2
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 8
    assert len(dm.test_dataset) == 4  # val images of the two chosen classes only
    named = module(tmp_path, class_subset=["n01484850", "n01440764"])
    assert named.classes == ["n01440764", "n01484850"]
    named.setup("test")
    labels = [y for _, y in named.test_dataset]
    assert sorted(set(labels)) == [0, 1] and len(labels) == 4


def test_fewer_than_1000_classes_warns(tmp_path):
    make_imagenet(tmp_path)
    with pytest.warns(UserWarning, match="has 3 class folders in train/, not 1000"):
        assert module(tmp_path).num_classes == 3


# --- bad copies and arguments -----------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*train/<wnid>/"):
        module(tmp_path / "nowhere").setup("fit")


def test_no_train_folder_and_no_archives(tmp_path):
    with pytest.raises(ConfigError, match="has no train/ folder. Expected train/<wnid>"):
        module(tmp_path).setup("fit")


def test_archives_not_extracted_yet_name_the_classes_and_say_how(tmp_path, archives_accepted):
    make_imagenet(tmp_path, layout="archives")
    before = sorted(os.listdir(tmp_path))
    dm = module(tmp_path)
    # the CLI sizes the classifier before prepare_data: the devkit names the classes
    assert dm.classes == sorted(IMAGENET_WNIDS)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written yet
    with pytest.raises(ConfigError, match="ILSVRC2012_img_train.tar.*extracted by prepare_data"):
        dm.setup("fit")


def test_corrupt_devkit_is_named(tmp_path):
    make_imagenet(tmp_path, layout="archives")  # the md5 check is real here: it must fail
    with pytest.raises(ConfigError, match="Could not read .*ILSVRC2012_devkit_t12.tar.gz"):
        module(tmp_path).num_classes  # noqa: B018


def test_archive_without_devkit(tmp_path):
    make_imagenet(tmp_path, layout="archives")
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(ConfigError, match="lacks ILSVRC2012_devkit_t12.tar.gz"):
        module(tmp_path).prepare_data()
    with pytest.raises(ConfigError, match="no ILSVRC2012_devkit_t12.tar.gz, which names the"):
        module(tmp_path).num_classes  # noqa: B018


def test_corrupt_archive_is_named(tmp_path):
    make_imagenet(tmp_path, layout="archives")  # the md5 checks are real here: they must fail
    with pytest.raises(ConfigError, match="Could not extract ImageNet's train split.*md5"):
        module(tmp_path).prepare_data()


def test_interrupted_train_extraction(tmp_path):
    make_imagenet(tmp_path)
    wnid = sorted(IMAGENET_WNIDS)[0]
    with tarfile.open(tmp_path / "train" / f"{wnid}.tar", "w"):
        pass
    with pytest.raises(ConfigError, match=r"still holds 1 per-class archives \(e.g. n01440764.tar"):
        module(tmp_path).setup("fit")


def test_flat_val_folder(tmp_path):
    make_imagenet(tmp_path)
    for folder in (tmp_path / "val").iterdir():
        for image in folder.iterdir():
            image.rename(tmp_path / "val" / image.name)
        folder.rmdir()
    with pytest.raises(ConfigError, match="holds 6 images but no class folders.*val-prep"):
        module(tmp_path).setup("test")


def test_val_missing_a_class(tmp_path):
    make_imagenet(tmp_path)
    for image in (tmp_path / "val" / "n01484850").iterdir():
        image.unlink()
    (tmp_path / "val" / "n01484850").rmdir()
    with pytest.raises(ConfigError, match="has 2 of the 3 classes of train/ .missing e.g. n0148"):
        module(tmp_path).setup("test")


def test_empty_class_folder(tmp_path):
    make_imagenet(tmp_path)
    for image in (tmp_path / "train" / "n01443537").iterdir():
        image.unlink()
    with pytest.raises(ConfigError, match="1 class folder.s. of .* hold no image .*n01443537"):
        module(tmp_path).setup("fit")


def test_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match="has no class folders; expected 1000"):
        module(tmp_path).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(crop_size=64, resize_size=32), "crop_size <= resize_size"),
        (dict(class_subset=1), "class_subset must be >= 2"),
        (dict(class_subset=["n01440764"]), "a list of at least 2 wnids"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        module(tmp_path, **kwargs)


def test_bad_class_subsets(tmp_path):
    make_imagenet(tmp_path)
    with pytest.raises(ConfigError, match="class_subset=5 exceeds the 3 class folders"):
        module(tmp_path, class_subset=5).setup("fit")
    with pytest.raises(ConfigError, match="names 1 wnid.s. with no folder.*n99999999"):
        module(tmp_path, class_subset=["n01440764", "n99999999"]).setup("fit")


# --- backbones --------------------------------------------------------------------------------

IMAGENET_NETS = {
    "resnet18_imagenet": torchvision.models.resnet18,
    "resnet50_imagenet": torchvision.models.resnet50,
    "vgg16_bn_imagenet": torchvision.models.vgg16_bn,
    "vgg19_bn_imagenet": torchvision.models.vgg19_bn,
}


def test_the_imagenet_backbones_are_registered_with_a_fixed_width():
    assert FIXED_WIDTH == set(IMAGENET_NETS)
    with pytest.raises(ConfigError, match="width is fixed: leave --model.width unset"):
        build_backbone("resnet50_imagenet", 10, width=16)
    with pytest.raises(ConfigError, match="image_size=16 is too small for resnet50_imagenet"):
        build_backbone("resnet50_imagenet", 10, image_size=16)


@pytest.mark.parametrize("name", IMAGENET_NETS)
def test_same_parameters_as_torchvision_with_the_last_linear_as_classifier(name):
    with torch.device("meta"):
        ours = build_backbone(name, 1000, image_size=224)
        reference = IMAGENET_NETS[name](num_classes=1000)
    shapes = [p.shape for p in ours.parameters()]
    assert shapes == [p.shape for p in reference.parameters()]
    assert isinstance(ours.classifier, nn.Linear) and ours.classifier.out_features == 1000
    last = [n for n, _ in ours.named_parameters()][-2:]
    assert last == ["classifier.weight", "classifier.bias"]
    # "*.classifier.*"-style patterns reach the final layer only (VGG's hidden head is body.head)
    assert [n for n, _ in ours.named_parameters() if "classifier" in n] == last


@pytest.mark.parametrize("name", ["resnet18_imagenet", "resnet50_imagenet", "vgg16_bn_imagenet"])
def test_forward_grayscale_small_input_and_init(name):
    torch.manual_seed(0)
    model = build_backbone(name, 5, in_channels=1, image_size=32)
    logits = model(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0
    # the project's init (Kaiming normal, fan_in), not torchvision's (fan_out / N(0, 0.01))
    weight = model.classifier.weight
    assert weight.std().item() == pytest.approx((2 / weight.shape[1]) ** 0.5, rel=0.1)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == 1
    fan_in = stem.weight[0].numel()
    assert stem.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)


# --- the paper's config, end to end -----------------------------------------------------------

SMOKE = [
    "--trainer.fast_dev_run", "true", "--pruning.method", "force", "--pruning.sparsity", "0.95",
    "--pruning.steps", "2", "--pruning.num_batches", "1", "--data.batch_size", "4",
    "--data.crop_size", "32", "--data.resize_size", "36", "--data.num_workers", "0",
]  # fmt: skip


def run_cli(tmp_path: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """The console script, as a user runs it; ``sitecustomize`` accepts the fixture archives."""
    (tmp_path / "site").mkdir(exist_ok=True)
    fixtures = Path(__file__).parent
    (tmp_path / "site" / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(fixtures)!r})\n"
        "from data_fixtures import presence_only_imagenet_archives\n"
        "presence_only_imagenet_archives()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "site"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29700 + os.getpid() % 200),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(Path(sys.executable).parent / "pruning-lightning"), "fit", "--config", str(CONFIG),
        "--data.data_dir", str(data_dir), *SMOKE, "--trainer.default_root_dir", str(tmp_path),
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folders", "archives"])
def test_paper_config_fast_dev_run(tmp_path, layout):
    data = make_imagenet(tmp_path / "imagenet", layout=layout, per_class=6)
    proc = run_cli(tmp_path, data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "test/acc1" in proc.stdout + proc.stderr
    assert (data / "train").is_dir() and (data / "val").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folders", "archives"])
def test_paper_config_fast_dev_run_ddp(tmp_path, layout):
    data = make_imagenet(tmp_path / "imagenet", layout=layout, per_class=6)
    proc = run_cli(
        tmp_path, data, "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "test/acc1" in proc.stdout + proc.stderr
