"""Figure [vitb32_encoder1_ln]: Untrained ViT-B/32 with the trained first LayerNorm (and the trained positional embedding).

    python scripts/fig_vitb32_encoder1_ln.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("untrained", ["model=vit_b_32"], smoke=["model=vit_tiny", "layers=[0,1]"]),
    Panel("trained first LayerNorm", ["model=vit_b_32", "surgery=trained_norm1"],
          smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
    Panel("trained positional embedding", ["model=vit_b_32", "surgery=trained_pos_embed"],
          smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
]

if __name__ == "__main__":
    sys.exit(main("vitb32_encoder1_ln",
                  "Untrained ViT-B/32 with the trained first LayerNorm (and the trained positional embedding)",
                  "fig_encoder1_ln", PANELS))
