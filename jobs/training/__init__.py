"""Training: methods (LoRA, adapters, full ...), the Trainer, safeguards, checkpoints and continuation."""
