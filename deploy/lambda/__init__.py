"""infergw deploy: lambda."""
