"""Figure [vitb32_encoder1_ln]: the study's transplant (trained input convolution, untrained encoders) in ViT-B/32,
alone and with the trained first LayerNorm or the trained positional embedding added, from the first encoder on.

The panels are the ledger's trained-norm1 and trained-pos-embed conditions (the same surgery overrides).

    python scripts/fig_vitb32_encoder1_ln.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

TRANSPLANT = "trained_input_untrained_encoders"
PANELS = [
    Panel(label, ["model=vit_b_32", f"surgery={surgery}", "layers=[0,1,5,11]"], smoke=["model=vit_tiny", "layers=[0,1]"],
          trained=True)
    for label, surgery in [("transplant", TRANSPLANT),
                           ("transplant + trained first LayerNorm", f"[{TRANSPLANT},trained_norm1]"),
                           ("transplant + trained positional embedding", f"[{TRANSPLANT},trained_pos_embed]")]
]

if __name__ == "__main__":
    sys.exit(main("vitb32_encoder1_ln",
                  "Transplanted ViT-B/32 with the trained first LayerNorm or positional embedding",
                  "fig_encoder1_ln", PANELS))
