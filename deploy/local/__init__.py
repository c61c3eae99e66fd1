"""infergw."""
