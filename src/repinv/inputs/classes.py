"""ImageNet classes by index or name, resolved through timm's ImageNet class info."""

from __future__ import annotations

from functools import lru_cache

from repinv.errors import RepinvError, listing, suggest


@lru_cache(maxsize=1)
def imagenet_names() -> list[list[str]]:
    """Per class index, its names: the synonyms of timm's description (first = display name) and its WordNet id."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [
        [*(s.strip() for s in info.index_to_description(i).split(",")), info.index_to_label_name(i)]
        for i in range(info.num_classes())
    ]


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def class_name(index: int, num_classes: int = 1000) -> str:
    """The display name of an ImageNet class (the index as text for heads of another size)."""
    names = imagenet_names()
    return names[index][0] if num_classes == len(names) else str(index)


def resolve_class(spec: int | str, num_classes: int) -> int:
    """An index into the model's logits from an index (`207`, `"207"`) or an ImageNet name (`golden retriever`)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise RepinvError(
            f"class {spec} is neither an index nor a name. Give an index into the model's {num_classes} logits "
            f"(0 to {num_classes - 1}) or an ImageNet class name, e.g. classes=[207,goldfish]."
        )
    if isinstance(spec, str) and spec.strip().lstrip("-").isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        if not 0 <= spec < num_classes:
            raise RepinvError(f"class {spec} is out of range: the model has {num_classes} classes (0 to {num_classes - 1}).")
        return spec
    names = imagenet_names()
    if num_classes != len(names):
        raise RepinvError(
            f"class '{spec}' is a name, but the model's head has {num_classes} classes, not ImageNet's {len(names)}; "
            f"give indices (0 to {num_classes - 1})."
        )
    key = _key(spec)
    hits = [i for i, syn in enumerate(names) if key in (_key(s) for s in syn)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise RepinvError(
            f"class '{spec}' names several ImageNet classes ({', '.join(f'{i}: {names[i][0]}' for i in hits)}); "
            "give the index instead."
        )
    every = {_key(s): s for syn in names for s in syn}
    close = suggest(key, every)
    raise RepinvError(
        f"class '{spec}' is not an ImageNet class name.{close} Give an index (0-999) or a name such as "
        f"{listing([n[0] for n in names[::100]], 10)} (timm.data.ImageNetInfo lists them all)."
    )
