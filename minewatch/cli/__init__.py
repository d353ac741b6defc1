"""Command-line interface: one click group, one module per subcommand."""
