"""torch.compile for the DiT and the VAE decoder: compiled per shape, eager (and exact) for shapes not warmed."""
