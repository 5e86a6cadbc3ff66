"""What a saved network is, written beside its weights: a BUNDLE's or a RUN's weights file describes itself (as
timm's pretrained config or smp's ``save_pretrained`` config describe theirs).

A :class:`NetworkCard` is kept as str -> str entries of the safetensors header, each named ``wsm.<field>``:

==============  ==========================================================================================
card            the format of these entries (:data:`CARD_FORMAT`)
network         ``segmenter`` (:mod:`wsm.models.segmentation`) or ``classifier`` (:mod:`wsm.models.classifier`)
arch            the segmentation architecture, or the classifier's name (as a recipe's ``arch`` names them)
encoder         the segmenter's encoder (absent for a classifier)
num_classes     output channels
in_chans        input channels (4: RGB and a guide map)
input_size      the square side, in pixels, it was trained at (absent when not known)
mean, std       the normalisation of its inputs, comma-separated RGB values (wsm's: the ISIC mean and std of
                :mod:`wsm.models.inputs`)
==============  ==========================================================================================

:func:`wsm.models.segmentation.create_segmenter` and :func:`wsm.models.classifier.create_classifier` attach a card to
the network they build (``model.wsm_card``), the training loop records the size it trained at, and whatever saves a
network's final weights writes :func:`network_card` into the header (``wsm.learn.loop.save_network``: RUN/
model.safetensors and a BUNDLE's networks). Readers build the network from the file's own card after checking it
against what they expect (:func:`checked_card`, through ``wsm.learn.loop.load_network``); a file written before
cards existed has none, and its network is built from what they expect, as before.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from wsm.errors import WsmError
from wsm.models.inputs import ISIC_MEAN, ISIC_STD

__all__ = ["CARD_FORMAT", "NetworkCard", "NetworkCardError", "card_of", "checked_card", "network_card", "read_card",
           "record_input_size"]

CARD_FORMAT = 1
PREFIX = "wsm."
NETWORKS = ("segmenter", "classifier")
_INTS = ("num_classes", "in_chans", "input_size")
_TRIPLES = ("mean", "std")


class NetworkCardError(WsmError, ValueError):
    """A weights file whose description is unreadable, or is not the network that was asked for."""


def _triple(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


@dataclass(frozen=True)
class NetworkCard:
    network: str                          # "segmenter" or "classifier"
    arch: str                             # segmentation architecture, or the classifier's name
    encoder: str = ""                     # the segmenter's encoder; "" for a classifier
    num_classes: int = 1
    in_chans: int = 3
    input_size: int | None = None         # square side it was trained at; None: not known
    mean: tuple[float, ...] = ISIC_MEAN
    std: tuple[float, ...] = ISIC_STD

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise NetworkCardError(f"a network card's network is one of {', '.join(NETWORKS)}, got {self.network!r}")

    def metadata(self) -> dict[str, str]:
        """The card as safetensors header entries (str -> str)."""
        entries = {"card": str(CARD_FORMAT)}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or (field.name == "encoder" and not value):
                continue
            entries[field.name] = ",".join(repr(float(v)) for v in value) if field.name in _TRIPLES else str(value)
        return {PREFIX + key: value for key, value in entries.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "the weights file") -> NetworkCard | None:
        """The card in a file's header entries; None when they hold none (a file written before cards)."""
        entries = {key[len(PREFIX):]: value for key, value in (metadata or {}).items() if key.startswith(PREFIX)}
        if "card" not in entries:
            return None
        version = entries.pop("card")
        if not version.isdigit() or int(version) > CARD_FORMAT:
            raise NetworkCardError(f"{source} was described by a newer wsm (network card format {version!r}; this "
                                   f"one reads up to {CARD_FORMAT}): upgrade wsm to load it")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{key: int(value) if key in _INTS else _triple(value) if key in _TRIPLES else value
                          for key, value in entries.items() if key in known})
        except NetworkCardError:
            raise
        except (TypeError, ValueError) as err:
            raise NetworkCardError(f"{source} has a damaged network description ({err}); "
                                   f"its header entries: {entries}") from None

    def describe(self) -> str:
        """One line: ``unet / test_resnet segmenter, 1 class, 3 input channels, 64 px``."""
        name = f"{self.arch} / {self.encoder}" if self.encoder else self.arch
        text = (f"{name} {self.network}, {self.num_classes} class{'es' if self.num_classes != 1 else ''}, "
                f"{self.in_chans} input channels")
        if self.input_size is not None:
            text += f", {self.input_size} px"
        if (self.mean, self.std) != (ISIC_MEAN, ISIC_STD):
            text += f", mean {self.mean} std {self.std}"
        return text

    def check(self, source: str, asked_by: str, **wanted) -> None:
        """Refuse, in one line naming both, a card that disagrees with ``wanted`` (field -> value).

        A value None, or a field this card does not record (an unknown input size), is not checked. The
        normalisation always is: wsm feeds every network the ISIC mean and std.
        """
        wanted = {"mean": ISIC_MEAN, "std": ISIC_STD, **wanted}
        wanted = {key: value for key, value in wanted.items() if value is not None and getattr(self, key) is not None}
        differ = [key for key, value in wanted.items() if getattr(self, key) != value]
        if differ:
            asked = dataclasses.replace(self, **wanted)
            raise NetworkCardError(f"{source} holds a {self.describe()}, but {asked_by} asks for a {asked.describe()} "
                                   f"(they differ in {', '.join(differ)})")

    def build(self):
        """The network this card describes, with fresh weights (to load saved ones into), carrying this card."""
        if self.network == "classifier":
            from wsm.models.classifier import create_classifier

            model = create_classifier(self.arch, self.num_classes, in_chans=self.in_chans)
        else:
            from wsm.models.segmentation import create_segmenter

            model = create_segmenter(self.arch, self.encoder, in_chans=self.in_chans, num_classes=self.num_classes)
        model.wsm_card = self
        return model


def _holder(model):
    """``model``, or the network a DistributedDataParallel wrapper around it holds."""
    inner = getattr(model, "module", None)
    return inner if not hasattr(model, "wsm_card") and hasattr(inner, "wsm_card") else model


def card_of(model) -> NetworkCard | None:
    """The card attached to ``model`` (or to the network a DDP wrapper holds); None for a network built otherwise."""
    card = getattr(_holder(model), "wsm_card", None)
    return card if isinstance(card, NetworkCard) else None


def record_input_size(model, size: int | None) -> None:
    """Record on ``model``'s card the square side it was trained at (nothing without a card or a size)."""
    card = card_of(model)
    if card is not None and size:
        _holder(model).wsm_card = dataclasses.replace(card, input_size=int(size))


def network_card(model) -> dict[str, str]:
    """``model``'s card as safetensors header entries; {} for a network without one."""
    card = card_of(model)
    return card.metadata() if card is not None else {}


def read_card(path: str | os.PathLike) -> NetworkCard | None:
    """The card in a safetensors file's header; None for a file written without one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise NetworkCardError(f"{path} is not a readable safetensors weights file ({str(err).splitlines()[0]})") \
            from None
    return NetworkCard.from_metadata(metadata, str(path))


def checked_card(path: str | os.PathLike, wanted: NetworkCard, asked_by: str, source: str | None = None,
                 ignore: Collection[str] = ()) -> NetworkCard:
    """The network a weights file holds: its own card once it agrees with ``wanted`` (but for the fields named in
    ``ignore``), or ``wanted`` itself for a file written before cards. Refused with a NetworkCardError naming
    ``source`` (default: the file) and ``asked_by``."""
    card = read_card(path)
    if card is None:
        return wanted
    card.check(source or str(path), asked_by,
               **{key: value for key, value in dataclasses.asdict(wanted).items() if key not in ignore})
    return card

