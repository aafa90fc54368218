"""Figure [vit_b_32_conv_representations]: ViT-B/32 patch-embedding filters before and after training.

Not an inversion: each panel is a one-step run whose filters.png (every filter min-max
normalised) is the row; the CSV gives how many filters are smooth patterns rather than noise
(the study: wavelets in about half the filters of the trained ViT-B/32).

    python scripts/fig_vit_b_32_conv_representations.py [--smoke] [--pretrained | --checkpoint FILE] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("untrained ViT-B/32", ["model=vit_b_32"], smoke=["model=vit_tiny"], show="filters"),
    Panel("trained ViT-B/32", ["model=vit_b_32"], smoke=["model=vit_tiny"], trained=True, show="filters"),
]

if __name__ == "__main__":
    sys.exit(main("vit_b_32_conv_representations", "ViT-B/32 patch-embedding filters before and after training",
                  "fig_vit_b_32_conv", PANELS))
