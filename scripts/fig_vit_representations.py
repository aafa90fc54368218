"""Figure [vit_representations]: Trained ViT-B/32: layer representations of a photograph (the study: dalmatian, tesla coil).

    python scripts/fig_vit_representations.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("trained ViT-B/32", ["model=vit_b_32", "layers=[0,2,5,8,11]"], smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
    Panel("untrained ViT-B/32", ["model=vit_b_32", "layers=[0,2,5,8,11]"], smoke=["model=vit_tiny", "layers=[0,1]"]),
]

if __name__ == "__main__":
    sys.exit(main("vit_representations",
                  "Trained ViT-B/32: layer representations of a photograph (the study: dalmatian, tesla coil)",
                  "fig_vit_layers", PANELS))
