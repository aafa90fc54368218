"""Figure [mlp_mixer_representations]: Untrained MLP-Mixer (width 1024) at patch 16 with and without LayerNorm, and patch 8.

    python scripts/fig_mlp_mixer_representations.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("Mixer-L/16", ["model=mixer_l16", "layers=[0,1,4,8]"], smoke=["model=mixer_tiny", "layers=[0,1]"]),
    Panel("Mixer-L/16 without LayerNorm", ["model=mixer_l16", "surgery=no_layernorm", "layers=[0,1,4,8]"],
          smoke=["model=mixer_tiny", "layers=[0,1]"]),
    Panel("Mixer-L/8", ["model=mixer_l8", "layers=[0,1,4,8]"], smoke=["model=mixer_tiny", "layers=[0,1]"]),
]

if __name__ == "__main__":
    sys.exit(main("mlp_mixer_representations",
                  "Untrained MLP-Mixer (patch 16, width 1024) with and without LayerNorm, and patch 8",
                  "fig_mixer", PANELS))
