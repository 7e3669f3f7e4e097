"""Ways to look at results and runs."""
