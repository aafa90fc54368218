"""Figure [vit_entry_representations]: ViT-B/32: patch-embedding convolution vs first encoder, untrained and trained.

    python scripts/fig_vit_entry_representations.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("untrained", ["model=vit_b_32", "layers=[patch_embed,0]"], smoke=["model=vit_tiny"]),
    Panel("trained", ["model=vit_b_32", "layers=[patch_embed,0]"], smoke=["model=vit_tiny"], trained=True),
]

if __name__ == "__main__":
    sys.exit(main("vit_entry_representations", "ViT-B/32: patch-embedding convolution vs first encoder, untrained and trained",
                  "fig_vit_entry", PANELS))
