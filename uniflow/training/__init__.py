"""Training with Lightning: the tokenizer and teacher LightningModules, callbacks, run directories, CLI.

The only place (with the CLI) where Lightning is imported; the model code stays plain PyTorch.
"""
