"""The generative engine: backbone UNet, diffusion, the one training loop, sampling, checkpoints."""
