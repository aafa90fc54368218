"""Figure [resnet_conv1_vit]: ResNet50 conv1 (three filters, 112x112) feeding ViT-B/32 encoders.

    python scripts/fig_resnet_conv1_vit.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("ResNet conv1 + ViT-B/32 encoders", ["model=vit_b_32", "surgery=resnet_stem", "layers=[0,1,5,11]"], smoke=["model=vit_tiny", "layers=[0,1]"]),
    Panel("ViT-B/32", ["model=vit_b_32", "layers=[0,1,5,11]"], smoke=["model=vit_tiny", "layers=[0,1]"]),
]

if __name__ == "__main__":
    sys.exit(main("resnet_conv1_vit", "ResNet50 conv1 (three filters, 112x112) feeding ViT-B/32 encoders", "fig_resnet_stem_vit", PANELS))
