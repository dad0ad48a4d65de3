"""Backbone spec strings: which library builds the network and under which name.

``timm:ARCH[.TAG]``, ``open_clip:NAME`` (``ARCH``, ``ARCH.TAG`` or ``hf-hub:ORG/REPO``) and ``hf:ORG/REPO``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from medmeta.errors import ConfigError

Library = Literal["timm", "open_clip", "hf"]
LIBRARIES: tuple[Library, ...] = ("timm", "open_clip", "hf")

FORMS = (
    "timm:ARCH[.TAG] (timm:resnet18.a1_in1k), "
    "open_clip:ARCH[.TAG] or open_clip:hf-hub:ORG/REPO (open_clip:ViT-B-32.laion2b_s34b_b79k), "
    "hf:ORG/REPO (hf:facebook/dinov2-small)"
)


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained backbone named by its library and the library's own name for it.

    Args:
        library: ``"timm"``, ``"open_clip"`` or ``"hf"`` (Hugging Face transformers).
        name: the name that library's loader takes: ``resnet18.a1_in1k``, ``hf-hub:ORG/REPO``, ``ORG/REPO``.

    Example:
        >>> BackboneSpec.parse("timm:resnet18.a1_in1k")
        BackboneSpec(library='timm', name='resnet18.a1_in1k')
        >>> str(BackboneSpec.parse("hf:facebook/dinov2-small"))
        'hf:facebook/dinov2-small'
    """

    library: Library
    name: str

    def __post_init__(self) -> None:
        if self.library not in LIBRARIES:
            raise ConfigError(f"unknown backbone library '{self.library}'; use one of: {FORMS}")
        if not self.name or self.name != self.name.strip() or any(c.isspace() for c in self.name):
            raise ConfigError(
                f"backbone name '{self.name}' for {self.library} is empty or has spaces; use one of: {FORMS}"
            )
        if self.library == "hf" and self.name.count("/") != 1:
            raise ConfigError(f"'hf:{self.name}' is not a hub repository id; write hf:ORG/REPO, e.g. {FORMS}")
        hub_name = self.library == "open_clip" and self.name.startswith("hf-hub:")
        if hub_name and self.name.removeprefix("hf-hub:").count("/") != 1:
            raise ConfigError(f"'open_clip:{self.name}' needs a repository: open_clip:hf-hub:ORG/REPO")

    @classmethod
    def parse(cls, text: str | BackboneSpec) -> BackboneSpec:
        """Parse ``LIBRARY:NAME``; a `BackboneSpec` is returned as it is.

        Raises:
            ConfigError: no known ``LIBRARY:`` prefix (the message lists the accepted forms).
        """
        if isinstance(text, BackboneSpec):
            return text
        library, sep, name = text.partition(":")
        if not sep or library not in LIBRARIES:
            raise ConfigError(f"backbone spec '{text}' has no known library prefix; use one of: {FORMS}")
        return cls(cast(Library, library), name)

    @property
    def arch(self) -> str:
        """The architecture part of a ``ARCH[.TAG]`` name (timm and built-in open_clip names)."""
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str | None:
        """The pretrained tag of a ``ARCH.TAG`` name, or None."""
        if self.library == "hf" or self.name.startswith("hf-hub:"):
            return None
        return self.name.partition(".")[2] or None

    def __str__(self) -> str:
        return f"{self.library}:{self.name}"
