"""Figure [vit_animals, vit_landscapes]: class generation with trained ViT-B/32: animals and landscapes.

    python scripts/fig_vit_class_generation.py [--smoke] [--pretrained | --checkpoint FILE] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("animals", ["model=vit_b_32", "classes=[tabby,golden_retriever,goldfish,great_white_shark]"],
          smoke=["model=vit_tiny"], trained=True),
    Panel("landscapes", ["model=vit_b_32", "classes=[alp,volcano,lakeside,seashore]"], smoke=["model=vit_tiny"], trained=True),
]

if __name__ == "__main__":
    sys.exit(main("vit_class_generation", "Class generation with trained ViT-B/32: animals and landscapes",
                  "fig_class_generation", PANELS))
