"""User-facing tools: mra-animate, mra-live, mra-web."""
