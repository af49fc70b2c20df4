"""One module per `aurora-sync` subcommand."""
