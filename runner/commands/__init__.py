"""One module per `aurora-sync` subcommand: `register(parser)` adds its arguments and sets `func` to its
`main(args)`. `runner.cli.SUBCOMMANDS` lists them; only the module of the command being run is imported."""
