"""Figure [resnet_conv1_vit]: ResNet50 conv1 (three filters, 112x112) feeding ViT-B/32 encoders.

The stem row's layer 0 is the stem's output (the three conv1 maps the encoders see), layer k
the k-th encoder, so its layers 1, 2, 6, 12 face the plain ViT's 0, 1, 5, 11. The trained panels'
ResNet50 follows --pretrained; a ResNet50 file: surgery.resnet_stem.donor.checkpoint=FILE.

    python scripts/fig_resnet_conv1_vit.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("ResNet50 conv1 + ViT-B/32 encoders", ["model=vit_b_32", "surgery=resnet_stem", "layers=[0,1,2,6,12]"],
          smoke=["model=vit_tiny", "layers=[0,1,2]"], trained=True),
    Panel("ViT-B/32", ["model=vit_b_32", "layers=[0,1,5,11]"], smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
]

if __name__ == "__main__":
    sys.exit(main("resnet_conv1_vit", "ResNet50 conv1 (three filters, 112x112) feeding ViT-B/32 encoders",
                  "fig_resnet_conv1_vit", PANELS))
