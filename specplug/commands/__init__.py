"""One module per `specplug` subcommand."""
