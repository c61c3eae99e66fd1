"""infergw deploy: sagemaker."""
