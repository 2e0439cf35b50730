"""The console's pages, one module each; ``district.console.registry`` lists them."""
