"""``DatasetMeta``: the class names and the contiguous label <-> dataset category id mapping."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DatasetMeta:
    """Names and ids of a dataset's classes.

    class_names[k] and cat_ids[k] describe contiguous label k (0..K-1, the labels models see);
    cat_ids are the dataset's own category ids (COCO json ``category_id``), used by the evaluator
    to write results. Travels into checkpoints via ``to_dict()`` / ``from_dict()``.
    """

    class_names: list[str]
    cat_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_names = [str(n) for n in self.class_names]
        if not self.cat_ids:
            self.cat_ids = list(range(1, len(self.class_names) + 1))
        self.cat_ids = [int(c) for c in self.cat_ids]
        if len(self.cat_ids) != len(self.class_names):
            raise ValueError(
                f"DatasetMeta: {len(self.class_names)} class names but {len(self.cat_ids)} category ids; "
                "give one category id per class name."
            )
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError(f"DatasetMeta: duplicate category ids in {self.cat_ids}.")

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def label_of(self, cat_id: int) -> int:
        """Contiguous label of a dataset category id; KeyError naming the id when unknown."""
        try:
            return self.cat_ids.index(int(cat_id))
        except ValueError:
            raise KeyError(f"category id {cat_id} is not among the dataset's categories {self.cat_ids}") from None

    def cat_id_of(self, label: int) -> int:
        """Dataset category id of contiguous label ``label``."""
        return self.cat_ids[int(label)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (json / checkpoint safe)."""
        return {"class_names": list(self.class_names), "cat_ids": list(self.cat_ids)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetMeta":
        """Inverse of ``to_dict``."""
        return cls(class_names=list(d["class_names"]), cat_ids=list(d.get("cat_ids") or []))
