"""Free text (an image name, a layer, an override's value) as a file or folder name: `slug`, for every writer and reader."""

from __future__ import annotations

import re


def slug(text, sep: str = "-", keep: str = "_.-") -> str:
    """`text` as one file or folder name: each run of characters other than letters, digits and `keep` becomes `sep`,
    without `sep` at either end; `x` when nothing is left.

    Run files use the defaults (`a b/c` -> `a-b-c`); the study's folders `sep="_", keep=".-"`, so that `_` also joins
    the runs it borders (`vit b_32` -> `vit_b_32`). Both spellings name folders and files already on disk: keep them.
    """
    return re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", sep, str(text)).strip(sep) or "x"
