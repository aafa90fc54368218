"""What a run inverts or aims at: photographs and image files, ImageNet classes."""
