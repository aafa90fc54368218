"""Figure [vit_trainedinput_untrained]: Trained input processing + untrained encoders: 1,500 vs 105,000 steps.

    python scripts/fig_vit_trainedinput_untrained.py [--smoke] [--pretrained | --checkpoint FILE] [--image PATH] [overrides...]
"""

import sys

from figlib import Panel, main

PANELS = [
    Panel("1,500 steps", ["model=vit_b_32", "surgery=trained_input_untrained_encoders", "steps=1500"],
          smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
    Panel("105,000 steps", ["model=vit_b_32", "surgery=trained_input_untrained_encoders", "steps=105000"],
          smoke=["model=vit_tiny", "layers=[0,1]"], trained=True),
]

if __name__ == "__main__":
    sys.exit(main("vit_trainedinput_untrained", "Trained input processing + untrained encoders: 1,500 vs 105,000 steps",
                  "fig_trained_input", PANELS))
