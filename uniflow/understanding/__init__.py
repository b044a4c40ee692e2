"""Understanding on frozen tokenizer or encoder features: probe heads (classification, segmentation,
depth, detection) and the multimodal probe."""
