"""Tests over gangs of real processes joined in a gloo group (the CPU stand-in for NCCL)."""
