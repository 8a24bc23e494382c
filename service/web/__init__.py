"""HTTP layer: thin handlers, middlewares and the error envelope."""
