"""The `wsm train` command line a run records (config.json, metrics.json) for a few option sets, spelled out in
full: a single network (TrainOptions.command), MB-DCNN (--pipeline) and the attribute task."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from wsm.train.attributes import attribute_command  # noqa: E402
from wsm.train.mbdcnn import _command as mbdcnn_command  # noqa: E402
from wsm.train.options import TrainOptions  # noqa: E402

OPTIONS = {
    "defaults": TrainOptions(data=Path("DATA"), out=Path("RUN")),
    "weak": TrainOptions(data=Path("my data"), out=Path("runs/weak"), labels="maps/WSM", min_confidence=0.7,
                         min_predicted_jaccard=0.65, arch="linknet", encoder="resnet18", epochs=3, size=128,
                         batch_size=8, lr=0.0005, seed=7, device="cuda:1", weak_augment="strong", accumulate=2),
    "both": TrainOptions(data=Path("DATA"), out=Path("RUN"), labels="both", wsm=Path("WSM"), loss="hybrid",
                         augment=False, pretrained=False, weights_file="enc.safetensors", init="earlier run",
                         threshold=0.4, weight_decay=0.0),
    "classes": TrainOptions(data=Path("DATA"), out=Path("RUN"), labels="class_maps", num_classes=3,
                            eval_split="none", split_train="all", augment_strength="strong"),
}

SINGLE = {
    "defaults": "wsm train --data DATA --out RUN --labels official --arch unet --encoder tf_efficientnet_lite0 "
                "--num-classes 1 --loss bce+dice --train-split train --eval-split val --epochs 20 --size 192 "
                "--batch-size 16 --lr 0.001 --weight-decay 0.0001 --seed 0 --device cpu",
    "weak": "wsm train --data 'my data' --out runs/weak --labels weak --maps maps/WSM --min-confidence 0.7 "
            "--min-predicted-jaccard 0.65 --arch linknet --encoder resnet18 --num-classes 1 --loss bce+dice "
            "--train-split train --eval-split val --epochs 3 --size 128 --batch-size 8 --lr 0.0005 "
            "--weight-decay 0.0001 --seed 7 --device cuda:1 --weak-augment strong --accumulate 2",
    "both": "wsm train --data DATA --out RUN --labels both --maps WSM --arch unet --encoder tf_efficientnet_lite0 "
            "--num-classes 1 --loss hybrid --train-split train --eval-split val --epochs 20 --size 192 "
            "--batch-size 16 --lr 0.001 --weight-decay 0.0 --seed 0 --device cpu --no-augment --no-pretrained "
            "--weights enc.safetensors --init 'earlier run' --threshold 0.4",
    "classes": "wsm train --data DATA --out RUN --labels weak --maps class_maps --arch unet "
               "--encoder tf_efficientnet_lite0 --num-classes 3 --loss ce --train-split all --eval-split none "
               "--epochs 20 --size 192 --batch-size 16 --lr 0.001 --weight-decay 0.0001 --seed 0 --device cpu "
               "--augment-strength strong",
}

ATTRIBUTES = {
    ("defaults", False): "wsm train --task attributes --data DATA --out RUN --arch unet "
                         "--encoder tf_efficientnet_lite0 --train-split train --eval-split val --epochs 20 "
                         "--size 192 --batch-size 16 --lr 0.001 --weight-decay 0.0001 --seed 0 --device cpu",
    ("weak", True): "wsm train --task attributes --with-lesion --data 'my data' --out runs/weak "
                    "--min-confidence 0.7 --min-predicted-jaccard 0.65 --arch linknet --encoder resnet18 "
                    "--train-split train --eval-split val --epochs 3 --size 128 --batch-size 8 --lr 0.0005 "
                    "--weight-decay 0.0001 --seed 7 --device cuda:1 --weak-augment strong --accumulate 2",
    ("both", False): "wsm train --task attributes --data DATA --out RUN --arch unet --encoder tf_efficientnet_lite0 "
                     "--train-split train --eval-split val --epochs 20 --size 192 --batch-size 16 --lr 0.001 "
                     "--weight-decay 0.0 --seed 0 --device cpu --no-augment --no-pretrained --weights enc.safetensors "
                     "--init 'earlier run' --threshold 0.4",
}

GIVEN = {"arch": "unet", "encoder": "resnet18", "epochs": 3, "size": 128, "batch_size": 8, "lr": 0.0005,
         "loss": "dice", "pretrained": False}
MBDCNN = [
    ("defaults", "mbdcnn", (), None,
     "wsm train --data DATA --out RUN --labels official --pipeline mbdcnn --train-split train --eval-split val "
     "--seed 0 --device cpu"),
    ("weak", "pipelines/my mbdcnn.toml", ("coarse.epochs=2", "cam.method=gradcam"), GIVEN,
     "wsm train --data 'my data' --out runs/weak --labels weak --maps maps/WSM --pipeline 'pipelines/my mbdcnn.toml' "
     "--min-confidence 0.7 --min-predicted-jaccard 0.65 --train-split train --eval-split val --seed 7 "
     "--device cuda:1 --arch unet --batch-size 8 --encoder resnet18 "
     "--epochs 3 --loss dice --lr 0.0005 --no-pretrained --size 128 --weak-augment strong --accumulate 2 "
     "--set coarse.epochs=2 --set cam.method=gradcam"),
    ("both", Path("mbdcnn"), ("size=224",), {},
     "wsm train --data DATA --out RUN --labels both --maps WSM --pipeline mbdcnn --train-split train "
     "--eval-split val --seed 0 --device cpu --no-augment --threshold 0.4 --set size=224"),
]


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_a_single_network_run_records_every_option(name):
    assert OPTIONS[name].command() == SINGLE[name]


@pytest.mark.parametrize("name, pipeline, overrides, given, expected", MBDCNN)
def test_an_mbdcnn_run_records_its_pipeline_the_flags_given_and_the_overrides(name, pipeline, overrides, given,
                                                                               expected):
    assert mbdcnn_command(OPTIONS[name], pipeline, overrides, given) == expected


@pytest.mark.parametrize("name, with_lesion", sorted(ATTRIBUTES))
def test_an_attribute_run_leaves_out_the_lesion_label_flags(name, with_lesion):
    assert attribute_command(OPTIONS[name], with_lesion) == ATTRIBUTES[name, with_lesion]


def test_a_variant_naming_no_such_flag_is_refused():
    with pytest.raises(ValueError, match="--no-such-flag"):
        OPTIONS["defaults"].command(drop=("--no-such-flag",))
    with pytest.raises(ValueError, match="--nor-this"):
        OPTIONS["defaults"].command(after={"--nor-this": ["x"]})


def test_every_recorded_line_is_one_the_command_line_takes():
    import shlex

    from wsm.cli import build_parser

    parser = build_parser()
    for line in [*SINGLE.values(), *(case[-1] for case in MBDCNN), *ATTRIBUTES.values()]:
        parser.parse_args(shlex.split(line)[1:])      # exits (SystemExit) on a flag or value it does not take


def test_a_recorded_single_line_gives_back_the_run_s_options():
    import dataclasses
    import shlex

    from wsm.cli import build_parser
    from wsm.cli.train import options

    parser = build_parser()
    for name, line in SINGLE.items():
        parsed, _ = options(parser.parse_args([*shlex.split(line)[1:], "-q"]))
        for field in ("augment", "augment_strength", "weak_augment", "min_predicted_jaccard", "epochs", "seed"):
            assert getattr(parsed, field) == getattr(OPTIONS[name], field), (name, field)
        assert dataclasses.replace(parsed, progress=True).command() == line, name
