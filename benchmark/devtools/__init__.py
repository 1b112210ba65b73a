"""Developer tools that users never import: the performance script and its loops, the CLI-doc generator."""
