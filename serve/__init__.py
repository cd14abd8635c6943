"""videoserve serving layer: CLI now; Ray Serve deployments, ingress and job stores next."""
