"""The subcommands, grouped by what they work on."""
