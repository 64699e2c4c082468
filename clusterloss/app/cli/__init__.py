"""The `clusterloss` command line: one module per subcommand."""
