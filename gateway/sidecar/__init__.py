"""infergw sidecar: transparent proxy in front of an existing Triton or TF Serving."""
