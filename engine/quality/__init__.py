"""Model-free quality measures for generated video: prompt adherence in the toy world and a
motion-compensated flicker score."""
