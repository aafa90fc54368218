"""Figure [vit_vs_resnet_untrained_representations]: Untrained ViT-B/32 vs untrained ResNet50: representation by depth.

    python scripts/fig_vit_vs_resnet_untrained_representations.py [--smoke] [--pretrained | --checkpoint FILE]
        [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("ViT-B/32 untrained", ["model=vit_b_32", "layers=[0,2,5,8,11]"], smoke=["model=vit_tiny", "layers=[0,1]"]),
    Panel("ResNet50 untrained", ["model=resnet50", "layers=[0,1,2,3,4]"], smoke=["model=resnet_tiny", "layers=[0,1]"]),
]

if __name__ == "__main__":
    sys.exit(main("vit_vs_resnet_untrained_representations", "Untrained ViT-B/32 vs untrained ResNet50: representation by depth",
                  "fig_vit_vs_resnet", PANELS))
