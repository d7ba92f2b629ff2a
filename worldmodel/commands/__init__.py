"""One module per `wm` command, named after it: each names its config (`CONFIG`, `CONFIG_NAME`)
and calls the library in `run(cfg)`. Commands never import each other."""
