"""infergw deploy: cloudrun."""
