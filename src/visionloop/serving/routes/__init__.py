"""One module per resource of the REST API, each with its ``router``; ``serving.app.add_routes`` includes them."""
