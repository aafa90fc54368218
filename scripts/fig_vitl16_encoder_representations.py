"""Figure [vitl16_encoder_representations]: ViT-L/16 at 512x512: encoder layers, and the untrained input convolution.

    python scripts/fig_vitl16_encoder_representations.py [--smoke] [--pretrained | --checkpoint FILE]
        [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("ViT-L/16 trained, encoders", ["model=vit_l_16", "layers=[0,4,8,16,23]"],
          smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
    Panel("ViT-L/16 untrained, input conv", ["model=vit_l_16", "layers=[patch_embed]"],
          smoke=["model=vit_tiny", "layers=[patch_embed]"]),
]

if __name__ == "__main__":
    sys.exit(main("vitl16_encoder_representations", "ViT-L/16 at 512x512: encoder layers, and the untrained input convolution",
                  "fig_vitl16", PANELS))
